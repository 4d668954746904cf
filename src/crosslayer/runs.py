"""Open a finished study A run for reuse: ``crosslayer.load_run(path)``.

>>> run = crosslayer.load_run("runs/study_a-quick-1a2b3c4d")
>>> run.features["baseline"].query("scorable").auroc.describe()
>>> run.depth_sweep                      # one row per hook of the sweep
>>> with crosslayer.model.splice(lm, run.transcoder): ...

Everything comes from the run directory's files (:mod:`crosslayer.rundir`); the layout of
each table is documented in ``docs/results_schema.md`` ("Loading a run").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from crosslayer.errors import CrosslayerError
from crosslayer.rundir import RunDir


def load_transcoder(run_dir: str | Path, device: str | None = None) -> Any:
    """The run's ridge transcoder: ``transcoder/`` (any run since the artefact existed), else the
    weights-only ``stages/transcoder.npz`` of an older run (it then knows no hooks)."""
    from crosslayer.transcoder import AffineTranscoder

    dirs = RunDir(Path(run_dir))
    if dirs.transcoder.is_dir():
        return AffineTranscoder.from_pretrained(dirs.transcoder, device=device)
    if dirs.transcoder_weights.is_file():
        saved = np.load(dirs.transcoder_weights)
        tc = AffineTranscoder(device=device)
        tc.coef_, tc.intercept_ = saved["coef"], saved["intercept"]
        tc.n_features_in_ = tc.coef_.shape[1]
        return tc
    raise CrosslayerError(
        f"run {run_dir} has no transcoder (no transcoder/ or stages/transcoder.npz)",
        "pass a finished study A run directory, or rerun `crosslayer run` to finish it",
    )
