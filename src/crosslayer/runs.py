"""Open a finished study A run for reuse: ``crosslayer.load_run(path)``.

>>> run = crosslayer.load_run("runs/study_a-quick-1a2b3c4d")
>>> run.features["baseline"].query("scorable").auroc.describe()
>>> run.depth_sweep                      # one row per hook of the sweep
>>> with crosslayer.model.splice(lm, run.transcoder): ...

Everything comes from the run directory's files (:mod:`crosslayer.rundir`); the layout of
each table is documented in ``docs/results_schema.md`` ("Loading a run").
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from crosslayer import fs
from crosslayer.config import RunConfig
from crosslayer.errors import CrosslayerError
from crosslayer.rundir import RunDir

if TYPE_CHECKING:
    import pandas as pd


def open_run_store(run_dir: Path, results: dict[str, Any]) -> Any:
    """The run's activation store (in the run directory, else where results.json says)."""
    # local: start-up cost (store, SAE and transcoder readers: load_run needs none of them)
    from crosslayer.store import open_store

    local = RunDir(run_dir).store
    return open_store(local if local.is_dir() else _in_run(run_dir, results["data"]["store"]))


def load_run_sae(run_dir: Path, results: dict[str, Any], name: str) -> Any:
    """An SAE of the run: ``saes/<name>`` for the trained ones, the ``--sae`` spec otherwise."""
    # local: start-up cost (sae-lens, 1.5 s)
    from crosslayer.sae import load_sae

    local = RunDir(run_dir).sae(name)
    spec = local if local.is_dir() else _in_run(run_dir, results["saes"][name]["path"])
    return load_sae(str(spec), device="cpu")


def _in_run(run_dir: Path, path: str) -> str:
    """results.json paths are relative to the run directory; a pretrained SAE's spec is not."""
    inside = run_dir / path
    return str(inside) if inside.exists() else path


def load_transcoder(run_dir: str | Path, device: str | None = None) -> Any:
    """The run's ridge transcoder: ``transcoder/`` (any run since the artefact existed), else the
    weights-only ``stages/transcoder.npz`` of an older run (it then knows no hooks)."""
    # local: start-up cost (torch)
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


# --------------------------------------------------------------------------------------------
# tables: Parquet for pandas/polars/duckdb, and a CSV copy beside it for spreadsheets


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` to ``path`` (``.parquet``) and the same rows to ``path`` with ``.csv``,
    each atomically. Returns the Parquet path."""
    path = Path(path).with_suffix(".parquet")
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    fs.atomic_write_bytes(path, buf.getvalue())
    fs.atomic_write_bytes(path.with_suffix(".csv"), df.to_csv(index=False).encode("utf-8"))
    return path


def feature_table(results: dict[str, Any], sae: str, run_dir: str | Path | None = None) -> Any:
    """Per-feature scores of one SAE, one row per probed feature.

    ``features/<sae>.parquet`` when the run wrote it; else built from results.json's
    ``features.<sae>.features`` (a dict of equal-length lists; its ``index`` column is named
    ``feature`` here, as in the Parquet table).
    """
    # local: start-up cost (pandas)
    import pandas as pd

    if run_dir is not None and RunDir(Path(run_dir)).feature_table(sae).is_file():
        return pd.read_parquet(RunDir(Path(run_dir)).feature_table(sae))
    block = (results.get("features") or {}).get(sae)
    if not block or not isinstance(block.get("features"), dict):
        raise CrosslayerError(
            f"the run has no per-feature table for SAE {sae!r}",
            f"use one of: {', '.join(results.get('features') or {}) or 'none (no SAE probed)'}",
        )
    cols = {k: v for k, v in block["features"].items() if isinstance(v, list)}
    if "feature" in cols:  # newer runs write both; `index` is the copy kept for plots
        cols.pop("index", None)
    df = pd.DataFrame(cols).rename(columns={"index": "feature"})
    for col in df.columns:  # JSON wrote NaN as null: back to NaN in numeric columns
        if df[col].dtype == object and df[col].map(lambda v: v is None or _is_num(v)).all():
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def depth_sweep_table(results: dict[str, Any]) -> Any:
    """The depth sweep, one row per target hook (None when the run made no sweep).

    Every list of the sweep's length becomes a column; scalars (``source_hook``, ``n_train``,
    ``n_heldout``) are repeated on each row so one row stands alone.
    """
    # local: start-up cost (pandas)
    import pandas as pd

    sweep = results.get("depth_sweep")
    if not sweep or not sweep.get("target_hooks"):
        return None
    n = len(sweep["target_hooks"])
    cols: dict[str, Any] = {"hook": sweep["target_hooks"]}
    for key, value in sweep.items():
        if key == "target_hooks" or isinstance(value, dict):
            continue
        if isinstance(value, list):
            if len(value) == n:
                cols[key] = [np.nan if v is None else v for v in value]
        else:
            cols[key] = [value] * n
    return pd.DataFrame(cols)


def decomposition_table(results: dict[str, Any]) -> Any:
    """``results["decomposition"][hook][predictor]`` as rows ``(hook, predictor, ev,
    ev_standardised, ci95_low, ci95_high, ...)``; None when the run has no decomposition."""
    # local: start-up cost (pandas)
    import pandas as pd

    dec = results.get("decomposition")
    if not isinstance(dec, dict) or not dec:
        return None
    rows = []
    for hook, preds in dec.items():
        if not isinstance(preds, dict):
            continue
        for predictor, entry in preds.items():
            if not isinstance(entry, dict):
                continue
            row: dict[str, Any] = {"hook": hook, "predictor": predictor}
            for key, value in entry.items():
                if key.endswith("ci95") and isinstance(value, list) and len(value) == 2:
                    row[f"{key}_low"], row[f"{key}_high"] = value
                elif not isinstance(value, dict | list):
                    row[key] = value
            rows.append(row)
    return pd.DataFrame(rows) if rows else None


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# --------------------------------------------------------------------------------------------
# the run


@dataclass
class LoadedRun:
    """A finished study A run, ready for a notebook (see :func:`load_run`)."""

    path: Path
    config: RunConfig
    results: dict[str, Any]
    features: dict[str, Any]  # SAE name -> pandas DataFrame, one row per probed feature
    depth_sweep: Any  # pandas DataFrame, one row per hook; None without a sweep
    decomposition: Any  # pandas DataFrame, one row per (hook, predictor); None when absent

    @property
    def hooks(self) -> tuple[str, str]:
        """``(source, target)``."""
        h = self.results["hooks"]
        return str(h["source"]), str(h["target"])

    def sae(self, name: str) -> Any:
        """One of the run's SAEs (``saes/<name>``, or the ``--sae`` spec of ``pretrained``)."""
        if name not in (self.results.get("saes") or {}):
            raise CrosslayerError(
                f"the run has no SAE {name!r}",
                f"use one of: {', '.join(self.results.get('saes') or {})}",
            )
        return load_run_sae(self.path, self.results, name)

    def store(self) -> Any:
        """The run's activation store (source and target hooks), opened lazily."""
        return open_run_store(self.path, self.results)

    @cached_property
    def transcoder(self) -> Any:
        """The ridge transcoder (:class:`~crosslayer.transcoder.AffineTranscoder`), loaded on
        first use; :func:`crosslayer.model.splice` puts it into a model."""
        return load_transcoder(self.path)

    def headline(self) -> Any:
        """One row per metric of the baseline-vs-residual comparison: both means, the
        difference and its 95% bootstrap CI (``results.comparison``)."""
        # local: start-up cost (pandas)
        import pandas as pd

        rows = []
        for metric, c in (self.results.get("comparison") or {}).items():
            if not isinstance(c, dict) or "diff_mean" not in c:
                continue
            lo, hi = c.get("diff_mean_ci95") or [np.nan, np.nan]
            rows.append(
                {
                    "metric": metric,
                    "baseline_mean": (c.get("baseline") or {}).get("mean"),
                    "residual_mean": (c.get("residual") or {}).get("mean"),
                    "n_baseline": (c.get("baseline") or {}).get("n"),
                    "n_residual": (c.get("residual") or {}).get("n"),
                    "diff_mean": c["diff_mean"],
                    "diff_ci95_low": lo,
                    "diff_ci95_high": hi,
                    "mannwhitney_p": c.get("mannwhitney_p"),
                    "difference": c.get("difference", "baseline - residual"),
                }
            )
        return pd.DataFrame(rows)


def load_run(path: str | Path) -> LoadedRun:
    """Open a finished study A run directory: config, results and tables as DataFrames.

    >>> run = load_run("runs/demo")
    >>> run.config.target, run.features["residual"].auroc.median()

    Raises :class:`CrosslayerError` when ``path`` holds no finished study A run.
    """
    path = Path(path)
    dirs = RunDir(path)
    if not dirs.results.is_file():
        raise CrosslayerError(
            f"no results.json in {path}: not a finished study A run",
            "pass the --out directory of a finished `crosslayer run` (rerun it to finish it)",
        )
    try:
        results = json.loads(dirs.results.read_text())
    except ValueError as e:
        raise CrosslayerError(
            f"{dirs.results} is not valid JSON ({e})", "run `crosslayer verify` on the run"
        ) from e
    if results.get("schema") != "crosslayer.study_a":
        raise CrosslayerError(
            f"{dirs.results} is not a study A results file (schema {results.get('schema')!r})",
            "pass the --out directory of `crosslayer run`",
        )
    try:
        config = RunConfig.model_validate({**results["config"], "out": str(path)})
    except ValidationError as e:
        raise CrosslayerError(
            f"the config in {dirs.results} does not fit this version's RunConfig "
            f"({e.errors()[0]['loc']}: {e.errors()[0]['msg']})",
            "load it with the crosslayer version in results.json's `versions`",
        ) from e
    features = {name: feature_table(results, name, path) for name in results.get("features") or {}}
    return LoadedRun(
        path=path,
        config=config,
        results=results,
        features=features,
        depth_sweep=depth_sweep_table(results),
        decomposition=decomposition_table(results),
    )
