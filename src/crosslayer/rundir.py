"""The layout of a study A run directory: the one place its file names are spelled out.

Study A's stages write here, ``crosslayer verify`` checks it and the report reads it, all
through :class:`RunDir`, so a stage's file cannot move without the other two following::

    RUN/
      config.json          the config (without `out`) and its hash: a rerun must match it
      store/               activations at the source and target hooks (docs/store_format.md)
      sweep_store/         every resid_post up to the target, fewer tokens (depth sweep)
      saes/baseline/       SAE trained on the target activations (sae-lens format)
      saes/residual/       SAE trained on target - transcoder(source)
      stages/              one finished stage per file: a rerun reuses them
        transcoder.npz       ridge coef [d_out, d_in] and intercept
        transcoder.json      metrics of the ridge, Adam and MLP transcoders
        features_<sae>.json  probes, token-determinedness, contexts per feature of one SAE
        sae_<sae>.json       held-out reconstruction and sparsity of one SAE
        depth.json           the depth sweep
        decomposition.json   the layer decomposition of the target and the sweep's layers
      results.json         docs/results_schema.md; its paths are relative to RUN
      *.png, report.html   plots and the report, drawn from results.json
      checksums.json       sha256 of every file but the stores (they carry their own); last
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.json"
RESULTS = "results.json"
REPORT = "report.html"
CHECKSUMS = "checksums.json"
STORE = "store"
SWEEP_STORE = "sweep_store"
STORES = (STORE, SWEEP_STORE)  # store directories; their manifests hold their own sums
SAES = "saes"
TRAINED_SAES = ("baseline", "residual")  # saes/<name>: every run trains both
STAGES = "stages"


def sae_path(name: str) -> str:
    """Where a trained SAE lives, relative to the run directory (as results.json names it)."""
    return f"{SAES}/{name}"


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def results(self) -> Path:
        return self.root / RESULTS

    @property
    def report(self) -> Path:
        return self.root / REPORT

    @property
    def checksums(self) -> Path:
        return self.root / CHECKSUMS

    @property
    def store(self) -> Path:
        return self.root / STORE

    @property
    def sweep_store(self) -> Path:
        return self.root / SWEEP_STORE

    def sae(self, name: str) -> Path:
        return self.root / sae_path(name)

    @property
    def stages(self) -> Path:
        return self.root / STAGES

    @property
    def transcoder_weights(self) -> Path:
        return self.stages / "transcoder.npz"

    @property
    def transcoder_metrics(self) -> Path:
        return self.stages / "transcoder.json"

    def features(self, sae: str) -> Path:
        return self.stages / f"features_{sae}.json"

    def sae_report(self, sae: str) -> Path:
        return self.stages / f"sae_{sae}.json"

    @property
    def depth(self) -> Path:
        return self.stages / "depth.json"

    @property
    def decomposition(self) -> Path:
        return self.stages / "decomposition.json"
