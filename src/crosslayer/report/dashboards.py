"""Latent dashboards in the style of SAE-vis and Neuronpedia.

One :class:`Dashboard` per latent shown: its top-activating contexts with every token
coloured by the latent's activation, contexts sampled from each quarter of its non-zero
activations (SAE-vis's "interval" groups: what the latent does when weakly on, not only at
its peak), a histogram of its activations with its density and the quarter edges, the tokens
its decoder direction promotes and suppresses (through the final norm's gain and the
unembedding, ``LoadedModel.direction_logits``) and how predictable it is from the early
layer. Study A's most and least predictable features, and the most typical features of each
taxonomy class (``taxonomy.saes.<sae>.examples``, baseline, residual and placebo), are
recomputed from the run directory (store, saved SAEs, transcoder, placebo removal);
study B's top latents come from ``interpret``'s ``results.json``
(:class:`crosslayer.experiments.latents.LatentInfo`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crosslayer.experiments.study_a.placebo import PlaceboRemoval
from crosslayer.report.figures import activation_histogram
from crosslayer.rundir import RunDir
from crosslayer.runs import load_run_sae, load_transcoder, open_run_store

PREDICTABILITY = ("balanced_accuracy", "auroc", "r2", "token_r2", "token_determinedness")


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
class QuantileGroup:
    """Contexts sampled among tokens whose activation lies in one quantile band of the
    latent's non-zero activations."""

    label: str  # "25–50%"
    lo: float
    hi: float
    n_tokens: int  # tokens in the band (the sample is drawn from these)
    contexts: list[Context] = field(default_factory=list)


# Quantile bands of the non-zero activations, and contexts sampled from each.
QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
PER_GROUP = 2


@dataclass
class Dashboard:
    anchor: str  # HTML id; other sections link to ``#anchor``
    title: str
    index: int
    density: float | None = None  # share of train tokens (study A) or store tokens (study B)
    run_density: float | None = None  # share of all the run's store tokens (study A, recomputed)
    predictability: dict[str, float | None] = field(default_factory=dict)
    promoted: list[tuple[str, float]] = field(default_factory=list)
    suppressed: list[tuple[str, float]] = field(default_factory=list)  # most negative first
    contexts: list[Context] = field(default_factory=list)
    quantile_groups: list[QuantileGroup] = field(default_factory=list)
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


def class_examples(results: dict[str, Any]) -> dict[str, dict[int, str]]:
    """Per SAE name, its taxonomy examples (feature index -> class), in class order."""
    out: dict[str, dict[int, str]] = {}
    for name, t in ((results.get("taxonomy") or {}).get("saes") or {}).items():
        out[name] = {}
        for c, feats in t.get("examples", {}).items():
            for f in feats:
                out[name].setdefault(int(f), c)
    return out


def wanted_features(
    run_dir: Path, results: dict[str, Any]
) -> tuple[dict[str, list[int]], dict[str, dict[int, str]]]:
    """The features that get a dashboard, per SAE: the extremes, then the class examples
    (of SAEs whose weights the run directory holds), and each example's class."""
    wanted = extreme_features(results)
    examples = class_examples(results)
    for name, ex in examples.items():
        if name not in results.get("saes", {}) and not RunDir(run_dir).sae(name).is_dir():
            continue
        seen = wanted.setdefault(name, [])
        seen += [f for f in ex if f not in seen]
    return wanted, examples


def predictability(feats: dict[str, Any], index: int) -> tuple[dict[str, float | None], Any]:
    """The probe metrics of one feature, and its train density (empty: not probed)."""
    table = feats.get("features", {})
    if index not in table.get("index", []):
        return {}, None
    row = table["index"].index(index)
    return {k: table[k][row] for k in PREDICTABILITY if k in table}, table["density"][row]


def study_a_dashboards(
    run_dir: Path, results: dict[str, Any], model: Any = None, batch_size: int = 4096
) -> list[Dashboard]:
    """Dashboards of study A's extreme features and of each class's typical features.

    With ``model`` (a :class:`~crosslayer.model.LoadedModel`: its tokenizer decodes the store's
    tokens, its unembedding gives promoted tokens) every context token is coloured by the
    feature's activation, recomputed from the store, and the activation histogram is drawn.
    Without it, the contexts stored in ``results.json`` are shown with the marked token's
    activation only.
    """
    wanted, examples = wanted_features(run_dir, results)
    boards = []
    for name, indices in wanted.items():
        if not indices:
            continue
        feats = results.get("features", {}).get(name, {})
        acts = None if model is None else _store_activations(run_dir, results, name, indices,
                                                             batch_size)  # fmt: skip
        effects = None if model is None else _logit_effects(run_dir, results, name, indices, model)
        for j, index in enumerate(indices):
            pred, train_density = predictability(feats, index)
            typical = examples.get(name, {}).get(index)
            board = Dashboard(
                anchor=study_a_anchor(name, index),
                title=f"study A · {name} SAE · feature {index}"
                + (f" · typical {typical}" if typical else ""),
                index=index,
                density=train_density,
                predictability=pred,
            )
            if acts is not None and model is not None:
                _fill_from_store(board, acts[:, j], run_dir, results, model.tokenizer)
            else:
                board.contexts = _contexts_from_results(feats, index)
                board.note = "per-token activations need the model's tokenizer (pass model=)"
            if effects is not None:
                board.promoted, board.suppressed = effects[j]
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


@torch.no_grad()
def _store_activations(
    run_dir: Path, results: dict[str, Any], name: str, indices: list[int], batch_size: int
) -> np.ndarray:
    """``[n_store_tokens, len(indices)]`` activations, in store order.

    The residual SAE reads ``R = target - transcoder(source)``; the transcoder is the ridge map
    the run saved in ``transcoder/`` (``stages/transcoder.npz`` in older runs). The placebo SAE
    reads ``target - M R`` (``stages/placebo.npz``, :mod:`crosslayer.experiments.study_a.placebo`).
    """
    store = open_run_store(run_dir, results)
    sae = load_run_sae(run_dir, results, name)
    source, target = results["hooks"]["source"], results["hooks"]["target"]
    coef = intercept = placebo = None
    if name in ("residual", "placebo"):
        tc = load_transcoder(run_dir)
        coef, intercept = tc.coef_, tc.intercept_
    if name == "placebo":
        placebo = PlaceboRemoval.load(RunDir(run_dir).placebo)
    parts = []
    for batch in store.iter_batches([source, target], split=None, batch_size=batch_size):
        x = batch[target]
        if coef is not None:
            r = x - (batch[source] @ coef.T + intercept)
            x = r if placebo is None else placebo.transform(x, r)
        f = sae.encode(torch.as_tensor(np.asarray(x, np.float32)))
        parts.append(f[:, indices].float().numpy())
    return np.concatenate(parts)


def _fill_from_store(
    board: Dashboard, acts: np.ndarray, run_dir: Path, results: dict[str, Any], tokenizer: Any
) -> None:
    """Top contexts and quantile-band samples with per-token activations, and the histogram,
    from one feature's column (store order)."""
    store = open_run_store(run_dir, results)
    analysis = results["config"].get("analysis", {})
    top_k, window = int(analysis.get("top_k", 5)), int(analysis.get("window", 12))
    ctx, pos = store.context_ids, store.positions

    def around(row: int) -> tuple[list[str], list[float]]:
        near = np.flatnonzero(
            (ctx == ctx[row]) & (pos >= pos[row] - window) & (pos <= pos[row] + 2)
        )
        return ([tokenizer.decode([int(t)]) for t in store.tokens[near]],
                [float(a) for a in acts[near]])  # fmt: skip

    top = [int(r) for r in np.argsort(-acts, kind="stable")[:top_k] if acts[r] > 0]
    board.contexts = coloured([around(r) for r in top])
    rng = np.random.default_rng(int(results["config"].get("seed", 0)) + board.index)
    groups, edges = quantile_groups(acts, rng)
    for group, rows in groups:
        group.contexts = coloured([around(r) for r in rows])
    board.quantile_groups = [g for g, _ in groups]
    board.run_density = float(np.mean(acts > 0))
    board.histogram = activation_histogram(acts, board.run_density, edges=edges)


def quantile_groups(
    acts: np.ndarray, rng: np.random.Generator, per_group: int = PER_GROUP
) -> tuple[list[tuple[QuantileGroup, list[int]]], list[float]]:
    """Bands of the non-zero activations between the :data:`QUANTILES`, each with up to
    ``per_group`` rows sampled (seeded, without replacement) among the tokens in it.

    Bands are closed above (``lo < a <= hi``; the first also takes ``a == lo``), so every
    active token falls in exactly one. Returns the groups with their rows, and the edges.
    """
    active = np.flatnonzero(acts > 0)
    if active.size == 0:
        return [], []
    edges = [float(e) for e in np.quantile(acts[active], QUANTILES)]
    a, out = acts[active], []
    for i in range(len(QUANTILES) - 1):
        lo, hi = edges[i], edges[i + 1]
        above = a >= lo if i == 0 else a > lo
        inside = active[above & (a <= hi)]
        rows = sorted(
            int(r) for r in rng.choice(inside, min(per_group, inside.size), replace=False)
        )
        label = f"{QUANTILES[i]:.0%}–{QUANTILES[i + 1]:.0%}"
        out.append((QuantileGroup(label, lo, hi, int(inside.size)), rows))
    return out, edges


Tokens = list[tuple[str, float]]


@torch.no_grad()
def _logit_effects(
    run_dir: Path, results: dict[str, Any], name: str, indices: list[int], model: Any, k: int = 10
) -> list[tuple[Tokens, Tokens]]:
    """Per feature, the ``k`` tokens its decoder row promotes most and suppresses most.

    The direct logit effect of the direction through the final norm's gain and the
    unembedding (``LoadedModel.direction_logits``): the gain varies by 1000x across Gemma 3's
    dimensions, so ``W_dec @ W_U`` alone mis-ranks tokens.
    """
    sae = load_run_sae(run_dir, results, name)
    logits = model.direction_logits(sae.W_dec[indices].float().to(model.device)).cpu()

    def decoded(ids: list[int], vals: list[float]) -> Tokens:
        return [
            (str(model.tokenizer.decode([t])), float(v)) for t, v in zip(ids, vals, strict=True)
        ]

    top, bottom = logits.topk(k, dim=-1), logits.topk(k, dim=-1, largest=False)
    return [
        (decoded(ti, tv), decoded(bi, bv))
        for ti, tv, bi, bv in zip(top.indices.tolist(), top.values.tolist(),
                                  bottom.indices.tolist(), bottom.values.tolist(), strict=True)
    ]  # fmt: skip
