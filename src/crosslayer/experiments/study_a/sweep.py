"""Stage 8: the depth sweep, held-out explained variance from the source to every layer."""

from __future__ import annotations

from typing import Any

from crosslayer.experiments.depth import depth_sweep
from crosslayer.experiments.study_a.hooks import sweep_hooks
from crosslayer.experiments.study_a.inputs import Hooks
from crosslayer.experiments.study_a.run import JsonFile, Run
from crosslayer.store import ActivationStore


def run_depth_sweep(run: Run, sweep_store: ActivationStore, hooks: Hooks) -> dict[str, Any]:
    """Held-out explained variance from the source to every resid_post up to the target."""

    def compute() -> dict[str, Any]:
        targets = sweep_hooks(hooks.source, hooks.target)[1:]
        return depth_sweep(sweep_store, hooks.source, targets).to_dict()

    return run.cached(
        JsonFile(run.dirs.depth), compute, ("depth_sweep", "depth sweep: source → every resid_post")
    )
