"""The layout of a study A run directory: the one place its file names are spelled out.

Study A's stages write here, ``crosslayer verify`` checks it and the report reads it, all
through :class:`RunDir`, so a stage's file cannot move without the other two following::

    RUN/
      config.json          the config (without `out`) and its hash: a rerun must match it
      store/               activations at the source and target hooks (docs/store_format.md)
      sweep_store/         every resid_post up to the target, fewer tokens (depth sweep)
      saes/baseline/       SAE trained on the target activations (sae-lens format)
      saes/residual/       SAE trained on target - transcoder(source)
      transcoder/          the ridge map as an artefact: cfg.json + model.safetensors
                           (AffineTranscoder.from_pretrained; W [d_out, d_in], b [d_out])
      saes/placebo/        SAE trained on target minus as much variance, along random
                           directions of the residual (experiments/study_a/placebo.py)
      saes/<name>_seed<k>/ the same dictionary trained with seed + k (k = 1 … seeds-1)
      stages/              one finished stage per file: a rerun reuses them
        transcoder.json      metrics of the ridge, Adam and MLP transcoders
        features_<sae>.json  cross-fitted scores, token lookup, contexts per feature of one SAE
        sae_<sae>.json       held-out reconstruction and sparsity of one SAE
        depth.json           the depth sweep
        placebo.npz          the placebo removal (directions, weights)
        docstats_<sae>.npz   per-document out-of-fold sums of one SAE's scorable features
        removals.json        variance each SAE input removed, linear signal it kept
        emergence.json       every feature's predictability from every layer, its class
        decomposition.json   the layer decomposition of the target and the sweep's layers
        sha256/<file>        the sha256 of each checkpoint's files (JSON, named after its first
                             file), written after it: a resumed stage whose files differ is
                             recomputed (Run.cached)
      features/<sae>.parquet  one row per alive feature: cross-fitted scores (+ a .csv copy)
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
TRANSCODER = "transcoder"  # AffineTranscoder.save_pretrained: cfg.json + model.safetensors
SAES = "saes"
TRAINED_SAES = ("baseline", "residual")  # saes/<name>: the seed-0 dictionaries every run has
# Every dictionary study A can train, per seed. The placebo joins TRAINED_SAES once the
# pipeline trains it in every run (verify expects each name in TRAINED_SAES to be present).
DICTIONARIES = ("baseline", "residual", "placebo")
STAGES = "stages"
STAGE_SUMS = "sha256"  # stages/sha256/: per-checkpoint sums (Run.cached)
FEATURES = "features"  # features/<sae>.parquet (+ .csv): one row per alive feature


def sae_path(name: str) -> str:
    """Where a trained SAE lives, relative to the run directory (as results.json names it)."""
    return f"{SAES}/{name}"


def seed_name(name: str, seed_index: int) -> str:
    """The SAE name of a dictionary's ``seed_index``-th training run: ``name`` for 0 (so
    code that reads ``saes/<name>`` keeps reading seed 0), ``<name>_seed<k>`` after."""
    if seed_index < 0:
        raise ValueError(f"seed_index must be >= 0, got {seed_index}")
    return name if seed_index == 0 else f"{name}_seed{seed_index}"


def all_trained_saes(n_seeds: int, names: tuple[str, ...] = DICTIONARIES) -> list[str]:
    """Every SAE name of ``names`` over ``n_seeds`` seeds, seed-major per dictionary."""
    return [seed_name(name, k) for name in names for k in range(n_seeds)]


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
    def transcoder(self) -> Path:
        """The ridge transcoder as a reusable artefact (``AffineTranscoder.from_pretrained``)."""
        return self.root / TRANSCODER

    def stage_sums(self, checkpoint_file: Path) -> Path:
        """Where the sha256 of the checkpoint whose first file is ``checkpoint_file`` is kept:
        ``stages/sha256/`` + its path below ``stages/`` (else below the run, ``/`` as ``__``):
        ``stages/depth.json`` -> ``stages/sha256/depth.json``, ``saes/baseline/cfg.json`` ->
        ``stages/sha256/saes__baseline__cfg.json``."""
        rel = checkpoint_file.relative_to(self.root)
        if rel.parts[0] == STAGES:
            rel = rel.relative_to(STAGES)
        return self.stages / STAGE_SUMS / "__".join(rel.parts)

    @property
    def transcoder_weights(self) -> Path:
        """Where runs kept the ridge map before ``transcoder/``: read only for such old runs."""
        return self.stages / "transcoder.npz"

    @property
    def transcoder_metrics(self) -> Path:
        return self.stages / "transcoder.json"

    def features(self, sae: str) -> Path:
        return self.stages / f"features_{sae}.json"

    def feature_table(self, sae: str) -> Path:
        return self.root / FEATURES / f"{sae}.parquet"

    def sae_report(self, sae: str) -> Path:
        return self.stages / f"sae_{sae}.json"

    @property
    def depth(self) -> Path:
        return self.stages / "depth.json"

    @property
    def placebo(self) -> Path:
        return self.stages / "placebo.npz"

    def doc_stats(self, sae: str) -> Path:
        return self.stages / f"docstats_{sae}.npz"

    @property
    def removals(self) -> Path:
        return self.stages / "removals.json"

    @property
    def emergence(self) -> Path:
        """Stage checkpoint of the emergence matrix and taxonomy (issue 15)."""
        return self.stages / "emergence.json"

    @property
    def decomposition(self) -> Path:
        return self.stages / "decomposition.json"
