"""Finding the experiments of a run directory and turning each into a template context.

A run directory holds study A's ``results.json`` at its root (``crosslayer run``) and/or
study B results (``layers``, ``contrast``, ``interpret``) at its root or in sub-directories.
Each ``results.json`` is recognised by its content, so only the experiments that ran get a
section, whatever the directories are called.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crosslayer.errors import CrosslayerError
from crosslayer.report import reference
from crosslayer.report.figures import file_uri

KINDS = ("study_a", "emergence", "layers", "contrast", "interpret")
TITLES = {
    "study_a": "Study A: how much of a late layer is predictable from an early one",
    "emergence": "Study A · When and which features emerge",
    "layers": "Study B · 1. Consistency across layers",
    "contrast": "Study B · 2. Direct vs evasive answers",
    "interpret": "Study B · 3. Latent interpretation on PARAREL facts",
}

# How to read each figure, by file name (prefix match for the per-prompt / per-kind ones).
CAPTIONS: dict[str, str] = {
    "study_a": "(a) transcoder R²: ours (held-out, per-dimension means) beside the study's "
    "metric (one global mean, on the training data); (b) per-dimension held-out R²; (c) "
    "baseline vs residual feature predictability; (d) predictability against density.",
    "depth_curve": "Out-of-fold explained variance (folds by document, with its 95% CI) of a "
    "ridge map from the source hook to every resid_post, and of the token lookup: how fast "
    "the early layer stops explaining the stream.",
    "feature_predictability": "One dot per scored feature: out-of-fold predictability against "
    "density and against the cross-fitted token-lookup R² (how much of the feature the current "
    "token's identity predicts in unseen documents; about 0 for a feature it does not "
    "determine).",
    "variance_split": "Each probed feature's out-of-fold variance, one vertical slice per "
    "feature (sorted): linear in the current token's embedding = clip(ridge R², 0, 1); "
    "token-determined beyond linear = clip(max(token-lookup R², ridge R²), 0, 1) − linear "
    "(the cross-fitted lookup E[f | token] is the ceiling of any function of the embedding); "
    "the rest = 1 − clip(max(…), 0, 1): needs context or is noise. Columns var_linear, "
    "var_token_extra, var_rest of features/<sae>.parquet; the title names the run's config.",
    "contrast_layers": "Left: per-layer own-question difference cos(q, direct) − cos(q, "
    "evasive) and the match effect (minus the same against other items' questions), 95% CIs, "
    "in the headline space. Middle: paired AUROC (win rate); dashed / dotted: the model's "
    "log-likelihood and PMI. Right: dz per space, with the 80%-power line.",
    "heatmaps": "The study's layer × layer maps: mean cos(question at layer i, answer at "
    "layer j) for direct and evasive answers, and their difference.",
    "promotes": "Share of fact groups whose top latents promote the answer token (see the "
    "definition below); compare with the random-latent chance level in the table.",
    "topic_by_topic": "Cosine between the mean latent codes of fact groups, per layer.",
    "prompt_by_prompt": "Cosine between the latent codes of individual prompts, per layer.",
    "layer_by_layer": "Cosine between layers of the same token's representation (for SAE "
    "latents the dictionaries differ, so off-diagonal cells are for comparison only).",
    "prompt": "Cosine heatmaps for one prompt: layer × layer per token, token × token per layer.",
    "cka": "Linear CKA between layers over corpus tokens (raw, or standardised: each dimension "
    "z-scored): 1 means the same geometry.",
    "emergence_heatmap": "One row per scored feature, one column per layer: its out-of-fold "
    "score from that layer as a share of its best; rows sorted by emergence layer (the first "
    "reaching the configured share of the best), never-predictable features grey, at the end.",
    "emergence_layers": "Share of each SAE's scored features emerging at each layer; the last "
    "bar counts the never-predictable ones.",
    "emergence_vs": "Emergence layer (jittered) against the cross-fitted token-lookup R² and "
    "against density: do token-like and dense features emerge early?",
}


@dataclass
class Figure:
    name: str
    uri: str
    caption: str


@dataclass
class Section:
    kind: str
    anchor: str
    title: str
    path: Path  # the directory of its results.json
    results: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    definitions: dict[str, str] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)


def kind_of(results: dict[str, Any]) -> str | None:
    """Which experiment wrote this ``results.json`` (None: not one the report knows)."""
    if results.get("schema") == "crosslayer.study_a":
        return "study_a"
    if "adjacent_layer_cosine" in results:
        return "layers"
    if "likelihood" in results and "heatmaps" in results:
        return "contrast"
    if "latents" in results and "groups" in results:
        return "interpret"
    return None


def read_results(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CrosslayerError(
            f"cannot read {path}: {e}", "rerun the experiment that wrote it"
        ) from e
    if not isinstance(data, dict):
        raise CrosslayerError(f"{path} is not a results object", "rerun the experiment")
    return data


def caption(name: str) -> str:
    for key in sorted(CAPTIONS, key=len, reverse=True):
        if name.startswith(key):
            return CAPTIONS[key]
    return ""


def figures_of(directory: Path, names: list[str] | None = None) -> list[Figure]:
    """The PNGs of one experiment, embedded (``names``: those in this order, else all)."""
    paths = [directory / n for n in names] if names else sorted(directory.glob("*.png"))
    return [Figure(p.stem, file_uri(p), caption(p.stem)) for p in paths if p.is_file()]


def find_sections(run_dir: Path) -> list[Section]:
    """One :class:`Section` per recognised ``results.json`` in ``run_dir`` (depth ≤ 2)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CrosslayerError(f"{run_dir} is not a directory", "pass the run's output directory")
    candidates = [run_dir / "results.json", *sorted(run_dir.glob("*/results.json")),
                  *sorted(run_dir.glob("*/*/results.json"))]  # fmt: skip
    sections: list[Section] = []
    for path in candidates:
        if not path.is_file():
            continue
        results = read_results(path)
        kind = kind_of(results)
        if kind is None:
            continue
        n = sum(s.kind == kind for s in sections)
        sections.append(_section(kind, n, path.parent, results))
        if kind == "study_a" and results.get("emergence"):
            sections.append(_emergence_section(n, path.parent, results))
    if not sections:
        raise CrosslayerError(
            f"no experiment results found in {run_dir}",
            "pass the directory of `crosslayer run` (or of layers/contrast/interpret --out)",
        )
    return sorted(sections, key=lambda s: KINDS.index(s.kind))


def _section(kind: str, n: int, directory: Path, results: dict[str, Any]) -> Section:
    anchor = kind if n == 0 else f"{kind}-{n + 1}"
    title = TITLES[kind] if n == 0 else f"{TITLES[kind]} ({directory.name})"
    s = Section(kind, anchor, title, directory, results)
    if kind == "study_a":
        s.figures = figures_of(directory, results.get("plots"))
        s.definitions = {**reference.REGRESSION_DEFINITIONS, **reference.PROBE_DEFINITIONS}
        s.reference = results.get("study_reference", {})
    else:
        s.figures = figures_of(directory)
        s.definitions = {
            "layers": reference.LAYERS_DEFINITIONS,
            "contrast": reference.CONTRAST_DEFINITIONS,
            "interpret": reference.INTERPRET_DEFINITIONS,
        }[kind]
        s.reference = reference.STUDY_B_REFERENCE[kind]
    return s


def _emergence_section(n: int, directory: Path, results: dict[str, Any]) -> Section:
    """Study A's emergence and taxonomy (issue 15): a section of its own, same results.json."""
    anchor = "emergence" if n == 0 else f"emergence-{n + 1}"
    title = TITLES["emergence"] if n == 0 else f"{TITLES['emergence']} ({directory.name})"
    em, tax = results["emergence"], results.get("taxonomy") or {}
    s = Section("emergence", anchor, title, directory, results)
    s.figures = figures_of(directory, em.get("plots") or [])
    s.definitions = {**em.get("definitions", {}), **tax.get("definitions", {})}
    return s
