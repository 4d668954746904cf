"""Latent dashboards in the style of SAE-vis and Neuronpedia.

One :class:`Dashboard` per latent shown: its top-activating contexts with every token
coloured by the latent's activation, a histogram of its activations, the tokens its decoder
direction promotes and how predictable it is from the early layer. Study A's most and least
predictable features are recomputed from the run directory (store, saved SAEs, transcoder);
study B's top latents come from ``interpret``'s ``results.json``
(:class:`crosslayer.experiments.latents.LatentInfo`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crosslayer.report.figures import activation_histogram
from crosslayer.rundir import RunDir

PREDICTABILITY = ("balanced_accuracy", "auroc", "r2", "token_determinedness")


@dataclass
class Token:
    text: str
    act: float
    alpha: float  # colour intensity in [0, 1]: act / the latent's largest shown activation


@dataclass
class Context:
    tokens: list[Token]
    max: float


@dataclass
class Dashboard:
    anchor: str  # HTML id; other sections link to ``#anchor``
    title: str
    index: int
    density: float | None = None  # share of train tokens (study A) or store tokens (study B)
    run_density: float | None = None  # share of all the run's store tokens (study A, recomputed)
    predictability: dict[str, float | None] = field(default_factory=dict)
    promoted: list[tuple[str, float]] = field(default_factory=list)
    contexts: list[Context] = field(default_factory=list)
    histogram: str | None = None  # data URI
    link: str | None = None  # Neuronpedia
    note: str = ""


def study_a_anchor(sae: str, index: int) -> str:
    return f"latent-a-{sae}-{index}"


def study_b_anchor(layer: int, index: int) -> str:
    return f"latent-b-{layer}-{index}"


def visible(text: str) -> str:
    """A token as shown: line breaks and tabs as visible marks (as SAE-vis does)."""
    return text.replace("\r\n", "↵").replace("\n", "↵").replace("\r", "↵").replace("\t", "⇥")


def coloured(contexts: list[tuple[list[str], list[float]]]) -> list[Context]:
    """Contexts as tokens coloured relative to the largest activation among them all."""
    top = max((max(acts, default=0.0) for _, acts in contexts), default=0.0)
    out = []
    for texts, acts in contexts:
        tokens = [
            Token(visible(t), float(a), float(np.clip(a / top, 0.0, 1.0)) if top > 0 else 0.0)
            for t, a in zip(texts, acts, strict=True)
        ]
        out.append(Context(tokens, max(acts, default=0.0)))
    return out


# --------------------------------------------------------------------------------------------
# study B: interpret's latents


def study_b_dashboards(interpret: dict[str, Any]) -> list[Dashboard]:
    """One dashboard per latent ``crosslayer interpret`` described (each layer/index once)."""
    out: dict[str, Dashboard] = {}
    for info in interpret.get("latents", []):
        anchor = study_b_anchor(info["layer"], info["index"])
        if anchor in out:
            continue
        ctx = [
            (c["tokens"], [0.0 if a is None else a for a in c["acts"]]) for c in info["contexts"]
        ]
        out[anchor] = Dashboard(
            anchor=anchor,
            title=f"study B · layer {info['layer']} SAE · latent {info['index']}",
            index=info["index"],
            density=info.get("density"),
            promoted=[(str(t), float(v)) for t, v in info.get("promoted", [])],
            contexts=coloured(ctx),
            link=info.get("neuronpedia"),
            note="predictability from the early layer is measured by study A (crosslayer run) "
            "for the SAE on its target hook only",
        )
    return list(out.values())


# --------------------------------------------------------------------------------------------
# study A: the most and least predictable features, recomputed from the run directory


def extreme_features(results: dict[str, Any]) -> dict[str, list[int]]:
    """Per SAE name, the indices of its most and least predictable features (in order)."""
    out: dict[str, list[int]] = {}
    for name, feats in results.get("features", {}).items():
        seen: list[int] = []
        for side in ("most", "least"):
            for item in feats.get("extremes", {}).get(side, []):
                if item["feature"] not in seen:
                    seen.append(int(item["feature"]))
        out[name] = seen
    return out


def predictability(feats: dict[str, Any], index: int) -> tuple[dict[str, float | None], Any]:
    """The probe metrics of one feature, and its train density."""
    table = feats["features"]
    row = table["index"].index(index)
    return {k: table[k][row] for k in PREDICTABILITY if k in table}, table["density"][row]


def study_a_dashboards(
    run_dir: Path, results: dict[str, Any], model: Any = None, batch_size: int = 4096
) -> list[Dashboard]:
    """Dashboards of study A's extreme features.

    With ``model`` (a :class:`~crosslayer.model.LoadedModel`: its tokenizer decodes the store's
    tokens, its unembedding gives promoted tokens) every context token is coloured by the
    feature's activation, recomputed from the store, and the activation histogram is drawn.
    Without it, the contexts stored in ``results.json`` are shown with the marked token's
    activation only.
    """
    wanted = extreme_features(results)
    boards = []
    for name, indices in wanted.items():
        if not indices:
            continue
        feats = results["features"][name]
        acts = None if model is None else _store_activations(run_dir, results, name, indices,
                                                             batch_size)  # fmt: skip
        promoted = None if model is None else _promoted(run_dir, results, name, indices, model)
        for j, index in enumerate(indices):
            pred, train_density = predictability(feats, index)
            board = Dashboard(
                anchor=study_a_anchor(name, index),
                title=f"study A · {name} SAE · feature {index}",
                index=index,
                density=train_density,
                predictability=pred,
            )
            if acts is not None and model is not None:
                _fill_from_store(board, acts[:, j], run_dir, results, model.tokenizer)
            else:
                board.contexts = _contexts_from_results(feats, index)
                board.note = "per-token activations need the model's tokenizer (pass model=)"
            if promoted is not None:
                board.promoted = promoted[j]
            boards.append(board)
    return boards


def _contexts_from_results(feats: dict[str, Any], index: int) -> list[Context]:
    """The ``«marked»`` contexts study A saved: only the marked token's activation is known."""
    for side in ("most", "least"):
        for item in feats.get("extremes", {}).get(side, []):
            if item["feature"] == index:
                pairs = []
                for c in item["contexts"]:
                    before = c["text"][: len(c["text"]) - len(c["token"]) - 2]
                    pairs.append(([before, c["token"]], [0.0, float(c["activation"])]))
                return coloured(pairs)
    return []


def open_run_store(run_dir: Path, results: dict[str, Any]) -> Any:
    """The run's activation store (in the run directory, else where results.json says)."""
    from crosslayer.store import open_store

    local = RunDir(run_dir).store
    return open_store(local if local.is_dir() else _in_run(run_dir, results["data"]["store"]))


def load_run_sae(run_dir: Path, results: dict[str, Any], name: str) -> Any:
    """An SAE of the run: ``saes/<name>`` for the trained ones, the ``--sae`` spec otherwise."""
    from crosslayer.sae import load_sae

    local = RunDir(run_dir).sae(name)
    spec = local if local.is_dir() else _in_run(run_dir, results["saes"][name]["path"])
    return load_sae(str(spec), device="cpu")


def _in_run(run_dir: Path, path: str) -> str:
    """results.json paths are relative to the run directory; a pretrained SAE's spec is not."""
    inside = run_dir / path
    return str(inside) if inside.exists() else path


@torch.no_grad()
def _store_activations(
    run_dir: Path, results: dict[str, Any], name: str, indices: list[int], batch_size: int
) -> np.ndarray:
    """``[n_store_tokens, len(indices)]`` activations, in store order.

    The residual SAE reads ``target - transcoder(source)``; the transcoder is the ridge map the
    run saved in ``stages/transcoder.npz``.
    """
    store = open_run_store(run_dir, results)
    sae = load_run_sae(run_dir, results, name)
    source, target = results["hooks"]["source"], results["hooks"]["target"]
    coef = intercept = None
    if name == "residual":
        saved = np.load(RunDir(run_dir).transcoder_weights)
        coef, intercept = saved["coef"], saved["intercept"]
    parts = []
    for batch in store.iter_batches([source, target], split=None, batch_size=batch_size):
        x = batch[target]
        if coef is not None:
            x = x - (batch[source] @ coef.T + intercept)
        f = sae.encode(torch.as_tensor(np.asarray(x, np.float32)))
        parts.append(f[:, indices].float().numpy())
    return np.concatenate(parts)


def _fill_from_store(
    board: Dashboard, acts: np.ndarray, run_dir: Path, results: dict[str, Any], tokenizer: Any
) -> None:
    """Top contexts with per-token activations, and the histogram, from one feature's column."""
    store = open_run_store(run_dir, results)
    analysis = results["config"].get("analysis", {})
    top_k, window = int(analysis.get("top_k", 5)), int(analysis.get("window", 12))
    ctx, pos = store.context_ids, store.positions
    pairs = []
    for row in np.argsort(-acts, kind="stable")[:top_k]:
        if acts[row] <= 0:
            break
        near = np.flatnonzero(
            (ctx == ctx[row]) & (pos >= pos[row] - window) & (pos <= pos[row] + 2)
        )
        pairs.append(([tokenizer.decode([int(t)]) for t in store.tokens[near]],
                      [float(a) for a in acts[near]]))  # fmt: skip
    board.contexts = coloured(pairs)
    board.run_density = float(np.mean(acts > 0))
    board.histogram = activation_histogram(acts, board.run_density)


@torch.no_grad()
def _promoted(
    run_dir: Path, results: dict[str, Any], name: str, indices: list[int], model: Any, k: int = 10
) -> list[list[tuple[str, float]]]:
    """The ``k`` tokens each feature's decoder row promotes most (``W_dec[i] @ W_U``)."""
    sae = load_run_sae(run_dir, results, name)
    logits = model.direction_logits(sae.W_dec[indices].float().to(model.device)).cpu()
    top = logits.topk(k, dim=-1)
    return [
        [(str(model.tokenizer.decode([t])), float(v)) for t, v in zip(ids, vals, strict=True)]
        for ids, vals in zip(top.indices.tolist(), top.values.tolist(), strict=True)
    ]
