"""Consistency across layers (study B, experiment 1).

Prompt level, as the study did: for each prompt, a layer x layer cosine matrix per token and a
token x token cosine matrix per layer, on residuals and on SAE latents where an SAE is
given, in each representation space (:mod:`crosslayer.experiments.spaces`; centred by
default: raw cosines of Gemma's residuals are near 1 for any two tokens, because every vector
carries the corpus mean). Layer x layer cosines of SAE latents compare different dictionaries
(latent i of one SAE is unrelated to latent i of another); they are reproduced for comparison.

Corpus level, over every token of an activation store: linear CKA between every pair of layers,
raw and standardised (each dimension z-scored: raw CKA is dominated by a few massive
dimensions), with a 95% bootstrap CI over contexts; each layer's variance share in its top
dimensions; SAE-code CKA on a seeded subset; and the depth curve of how much of each layer an
affine map from the embeddings explains (:func:`crosslayer.experiments.depth.depth_sweep`,
shared with study A).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from crosslayer.errors import CrosslayerError
from crosslayer.experiments.depth import depth_sweep
from crosslayer.experiments.output import heatmap, write_results
from crosslayer.experiments.reps import (
    SaeSite,
    SaeSpec,
    check_layers,
    resid_hook,
    sae_sites,
    sequence_reps,
)
from crosslayer.experiments.similarity import cka_matrix, cosine_matrix, grouped_cka
from crosslayer.experiments.spaces import (
    DEFAULT_SPACES,
    MomentAccumulator,
    Moments,
    check_spaces,
    moments_of,
    sae_encoder,
    store_moments,
)
from crosslayer.model import LoadedModel
from crosslayer.provenance import versions
from crosslayer.stage_configs import LayersConfig
from crosslayer.store import open_store

DEFAULT_PROMPTS = (
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "She poured the hot water over the tea leaves and waited three minutes.",
)


@dataclass
class PromptMaps:
    """Cosine maps of one prompt for one representation kind."""

    tokens: list[str]
    layer_by_layer: np.ndarray  # [T, L, L]: per token, cosine between layers
    token_by_token: np.ndarray  # [L, T, T]: per layer, cosine between tokens
    bos: bool = False  # token 0 is BOS (outsized norm, left out of the token-cosine summary)
    space: str = "raw"


@dataclass
class LayersResult:
    config: dict[str, Any]
    layers: list[int]
    prompts: list[dict[str, PromptMaps]]  # headline space, per prompt: "resid" / "sae" -> maps
    sae_layers: list[int] = field(default_factory=list)
    cka: dict[str, Any] = field(default_factory=dict)  # kind -> {space, hooks, matrix, ...}
    depth: dict[str, Any] | None = None  # DepthCurve.to_dict()
    model: dict[str, Any] = field(default_factory=dict)
    space: str = "raw"  # the headline space of `prompts` and the cosine summaries
    prompts_by_space: dict[str, list[dict[str, PromptMaps]]] = field(default_factory=dict)
    moments: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        prompts = [
            {
                k: {
                    "tokens": m.tokens,
                    "layer_by_layer": m.layer_by_layer,
                    "token_by_token": m.token_by_token,
                }
                for k, m in p.items()
            }
            for p in self.prompts
        ]
        by_space = {s: {"adjacent_layer_cosine": self.adjacent_cosine(s),
                        "mean_token_cosine": self.token_cosine(s)}
                    for s in self.prompts_by_space}  # fmt: skip
        return {"config": self.config, "model": self.model, "versions": versions(),
                "layers": self.layers, "sae_layers": self.sae_layers, "space": self.space,
                "adjacent_layer_cosine": self.adjacent_cosine(),
                "mean_token_cosine": self.token_cosine(), "by_space": by_space,
                "moments": self.moments, "cka": self.cka,
                "depth": self.depth, "prompts": prompts}  # fmt: skip

    def _maps(self, space: str | None) -> list[dict[str, PromptMaps]]:
        return self.prompts if space is None else self.prompts_by_space[space]

    def adjacent_cosine(self, space: str | None = None) -> dict[str, float]:
        """Mean cosine between consecutive layers over all tokens of all prompts, per kind
        (in ``space``, default the headline space)."""
        out = {}
        for kind in ("resid", "sae"):
            vals = [np.diagonal(p[kind].layer_by_layer, 1, 1, 2) for p in self._maps(space)
                    if kind in p]  # fmt: skip
            if vals and all(v.size for v in vals):
                out[kind] = float(np.nanmean(np.concatenate([v.ravel() for v in vals])))
        return out

    def token_cosine(self, space: str | None = None) -> dict[str, list[float | None]]:
        """Per kind and layer: mean cosine between different tokens of a prompt (BOS left out),
        over all prompts. Near 1 in raw space means that layer's vectors share one dominant
        direction, so raw cosines say little about how tokens differ (centring removes it)."""
        out: dict[str, list[float | None]] = {}
        for kind in ("resid", "sae"):
            maps = [p[kind] for p in self._maps(space) if kind in p]
            if not maps:
                continue
            per_layer: list[float | None] = []
            for li in range(maps[0].token_by_token.shape[0]):
                vals = []
                for m in maps:
                    x = m.token_by_token[li][int(m.bos) :, int(m.bos) :]
                    vals.append(x[~np.eye(len(x), dtype=bool)])
                v = np.concatenate(vals)
                v = v[np.isfinite(v)]
                per_layer.append(float(v.mean()) if v.size else None)
            out[kind] = per_layer
        return out


def prompt_reps(
    model: LoadedModel, prompt: str, layers: list[int], sites: Mapping[int, SaeSite]
) -> tuple[list[str], dict[str, dict[int, torch.Tensor]], bool]:
    """Token labels, per-layer representations (``reps.sequence_reps``) and whether token 0
    is BOS, for one prompt (BOS first where the tokenizer has one)."""
    tok = model.tokenizer
    ids = tok(prompt, add_special_tokens=False).input_ids
    if not ids:
        raise CrosslayerError(f"prompt {prompt!r} has no tokens", "give non-empty prompts")
    bos = tok.bos_token_id is not None
    if bos:
        ids = [tok.bos_token_id, *ids]
    return [str(tok.decode([i])) for i in ids], sequence_reps(model, ids, layers, sites), bos


def maps_in_space(
    labels: list[str], reps: Mapping[str, Mapping[int, torch.Tensor]], layers: list[int],
    bos: bool, moments: Mapping[str, Mapping[int, Moments]] | None = None, space: str = "raw",
) -> dict[str, PromptMaps]:  # fmt: skip
    """Cosine maps of one prompt's representations, each layer moved into ``space`` with its
    ``moments`` (needed unless ``space`` is raw)."""
    out = {}
    for kind, per_layer in reps.items():
        if not per_layer:
            continue
        stack = [
            per_layer[x].double().numpy() if space == "raw" or moments is None
            else moments[kind][x].transform(per_layer[x], space)
            for x in layers if x in per_layer
        ]  # fmt: skip
        same_width = len({r.shape[1] for r in stack}) == 1
        by_token = (
            np.stack([cosine_matrix(np.stack([r[t] for r in stack])) for t in range(len(labels))])
            if same_width
            else np.zeros((len(labels), 0, 0))
        )
        by_layer = np.stack([cosine_matrix(r) for r in stack])
        out[kind] = PromptMaps(labels, by_token, by_layer, bos, space)
    return out


def prompt_maps(
    model: LoadedModel, prompt: str, layers: list[int], sites: Mapping[int, SaeSite]
) -> dict[str, PromptMaps]:
    """Raw cosine maps of one prompt (BOS first) on residuals and, where given, SAE latents."""
    labels, reps, bos = prompt_reps(model, prompt, layers, sites)
    return maps_in_space(labels, reps, layers, bos)


def corpus_cka(
    store: Any, hooks: Sequence[str], *, sites: Sequence[SaeSite] = (),
    max_tokens: int | None = None, sae_max_tokens: int = 4096, n_boot: int = 1000,
    n_groups: int = 64, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Linear CKA between every pair of hooks over the store's tokens (all, or a seeded subset
    of ``max_tokens``), raw (``"resid"``) and standardised (``"resid_standardised"``), each
    with a bootstrap CI over contexts (contexts are dealt at random into ``n_groups`` groups,
    the resampled unit) and each layer's variance share in its top dimensions. SAE codes
    (``"sae"``, the SAEs' encodings of the same rows) on a seeded subset of ``sae_max_tokens``
    rows: 16k-wide codes make the feature form too large."""
    rng = np.random.default_rng(seed)
    n = len(store.tokens)
    rows = (np.arange(n) if max_tokens is None or max_tokens >= n
            else np.sort(rng.choice(n, size=max_tokens, replace=False)))  # fmt: skip
    acts = [np.asarray(store.activations(h)[rows], np.float32) for h in hooks]
    contexts = np.asarray(store.context_ids)[rows]
    uniq, ctx = np.unique(contexts, return_inverse=True)
    k = min(n_groups, len(uniq))
    groups = rng.permutation(len(uniq))[ctx.reshape(-1)] % k
    res = grouped_cka(acts, groups, n_boot=n_boot, seed=seed)
    variance = [moments_of(a, "store").to_dict() for a in acts]
    boot = {"n_boot": n_boot, "n_groups": k, "n_contexts": len(uniq), "level": 0.95,
            "unit": "contexts, dealt at random into n_groups groups"}  # fmt: skip
    out: dict[str, Any] = {}
    for key, space in (("resid", "raw"), ("resid_standardised", "standardised")):
        r = res[space]
        out[key] = {"space": space, "hooks": list(hooks), "n_tokens": len(rows),
                    "matrix": r["matrix"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                    "bootstrap": boot}  # fmt: skip
    out["resid"]["variance"] = {
        "top_dims": [v["top_dims"] for v in variance],
        "top1_variance_share": [v["top1_variance_share"] for v in variance],
        "top3_variance_share": [v["top3_variance_share"] for v in variance],
        "mean_norm_share": [v["mean_norm_share"] for v in variance],
    }
    if sites:
        sub = (rows if len(rows) <= sae_max_tokens
               else np.sort(rng.choice(rows, size=sae_max_tokens, replace=False)))  # fmt: skip
        codes = []
        for s in sites:
            x = torch.as_tensor(np.asarray(store.activations(s.hook)[sub], np.float32))
            with torch.inference_mode():
                codes.append(s.sae.encode(x.to(s.sae.device, s.sae.dtype)).float().cpu().numpy())
        out["sae"] = {"space": "raw", "hooks": [s.hook for s in sites],
                      "layers": [s.layer for s in sites], "n_tokens": len(sub),
                      "matrix": cka_matrix(codes)}  # fmt: skip
    return out


def run_layers(
    model: LoadedModel,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    *,
    layers: Sequence[int] | None = None,
    saes: Mapping[int, SaeSpec] | str | Path | None = None,
    sae_on_residual: bool = False,
    spaces: Sequence[str] = DEFAULT_SPACES,
    store: Any = None,
    depth_source: str = "hook_embed",
    max_tokens: int | None = None,
    sae_max_tokens: int = 4096,
    n_boot: int = 1000,
    seed: int = 0,
    out: str | Path | None = None,
) -> LayersResult:
    """Prompt-level cosine maps in every space of ``spaces`` (the first is the headline; the
    centring mean and sd come from ``store`` where it holds the hook, else from the prompts'
    own tokens, BOS left out), and with a ``store`` (an ActivationStore or its path) the
    corpus-level CKA matrices and embedding depth curve over its ``resid_post`` hooks."""
    if not prompts or any(not p.strip() for p in prompts):
        raise CrosslayerError("a prompt is empty", "give non-empty prompts")
    space_list = check_spaces(spaces)
    layer_list = check_layers(model, layers)
    sites = sae_sites(model, saes, layers=layer_list, sae_on_residual=sae_on_residual)
    if isinstance(store, str | Path):
        store = open_store(store)
    config = LayersConfig(
        prompts=list(prompts), layers=layer_list, sae_on_residual=sae_on_residual,
        spaces=tuple(space_list),
        store=None if store is None else str(getattr(store, "path", store)),
        depth_source=depth_source, max_tokens=max_tokens, sae_max_tokens=sae_max_tokens,
        n_boot=n_boot, seed=seed,
    ).model_dump()  # fmt: skip
    per_prompt = [prompt_reps(model, p, layer_list, sites) for p in prompts]
    moments = _prompt_moments(per_prompt, store, sites)
    by_space: dict[str, list[dict[str, PromptMaps]]] = {
        space: [maps_in_space(lab, reps, layer_list, bos, moments, space)
                for lab, reps, bos in per_prompt]
        for space in space_list
    }  # fmt: skip
    result = LayersResult(
        config,
        layer_list,
        by_space[space_list[0]],
        sae_layers=sorted(sites),
        model=model.identity,
        space=space_list[0],
        prompts_by_space=by_space,
        moments={k: {x: m.to_dict() for x, m in v.items()} for k, v in moments.items()},
    )
    if store is not None:
        result.cka, result.depth = _corpus(store, layer_list, sites, depth_source, max_tokens,
                                           sae_max_tokens, n_boot, seed)  # fmt: skip
    if out is not None:
        write_results(out, result.to_dict(), _figures(result))
    return result


def _prompt_moments(
    per_prompt: list[tuple[list[str], dict[str, dict[int, torch.Tensor]], bool]],
    store: Any, sites: Mapping[int, SaeSite],
) -> dict[str, dict[int, Moments]]:  # fmt: skip
    """Per kind and layer: the store's moments where it holds the hook, else the prompts'."""
    hooks = set(store.hooks) if store is not None else set()
    out: dict[str, dict[int, Moments]] = {"resid": {}, "sae": {}}
    for kind in ("resid", "sae"):
        for x in per_prompt[0][1][kind]:
            hook = resid_hook(x) if kind == "resid" else sites[x].hook
            if hook in hooks:
                enc = sae_encoder(sites[x].sae) if kind == "sae" else None
                out[kind][x] = store_moments(store, hook, encode=enc)
                continue
            acc = MomentAccumulator()
            for _, reps, bos in per_prompt:
                acc.add(reps[kind][x][int(bos) :])
            out[kind][x] = acc.moments("items")
    return out


def _corpus(
    store: Any, layers: list[int], sites: Mapping[int, SaeSite], source: str,
    max_tokens: int | None, sae_max_tokens: int, n_boot: int, seed: int,
) -> tuple[dict[str, Any], dict[str, Any] | None]:  # fmt: skip

    hooks = [resid_hook(x) for x in layers if resid_hook(x) in store.hooks]
    if len(hooks) < 2:
        raise CrosslayerError(
            f"the store holds {len(hooks)} of the resid_post hooks of layers {layers}",
            "collect blocks.L.hook_resid_post for the layers you ask for",
        )
    in_store = [s for s in sites.values() if s.hook in store.hooks]
    cka = corpus_cka(store, hooks, sites=in_store, max_tokens=max_tokens,
                     sae_max_tokens=sae_max_tokens, n_boot=n_boot, seed=seed)  # fmt: skip
    depth = depth_sweep(store, source, hooks).to_dict() if source in store.hooks else None
    return cka, depth


def _figures(result: LayersResult) -> dict[str, Any]:
    figs: dict[str, Any] = {}
    layer_labels = [str(x) for x in result.layers]
    for p, maps in enumerate(result.prompts):
        for kind, m in maps.items():
            labels = layer_labels if kind == "resid" else [str(x) for x in result.sae_layers]
            if m.layer_by_layer.shape[1] > 1:  # one SAE layer: a 1 x 1 map says nothing
                figs[f"prompt{p}_{kind}_layer_by_layer"] = _grid(
                    m.layer_by_layer,
                    [f"token {t}: {s!r} ({m.space})" for t, s in enumerate(m.tokens)],
                    labels)  # fmt: skip
            figs[f"prompt{p}_{kind}_token_by_token"] = _grid(
                m.token_by_token, [f"layer {x} ({m.space})" for x in labels], m.tokens)  # fmt: skip
    for kind, c in result.cka.items():
        if len(c["hooks"]) < 2:
            continue
        fig, ax = plt.subplots(figsize=(5, 4.3))
        heatmap(ax, c["matrix"], f"linear CKA ({kind}, {c['space']}, {c['n_tokens']} tokens)",
                [h.split(".")[1] if "." in h else h for h in c["hooks"]])  # fmt: skip
        figs[f"cka_{kind}"] = fig
    if result.depth is not None:
        d = result.depth
        fig, ax = plt.subplots(figsize=(6, 3.5))
        x = [int(h.split(".")[1]) for h in d["target_hooks"]]
        ax.plot(x, d["heldout_explained_variance"], marker="o", label="held-out, per-dim EV")
        ax.plot(
            x, d["heldout_r2_global_mean"], marker="s", ls="--", label="held-out, global-mean R²"
        )
        ax.set(xlabel="layer (resid_post)", ylabel="explained by embeddings",
               title=f"depth curve from {d['source_hook']}")  # fmt: skip
        ax.legend(fontsize=8)
        figs["depth_curve"] = fig
    return figs


def _grid(maps: np.ndarray, titles: list[str], labels: list[str], limit: int = 8) -> Any:
    """Up to ``limit`` cosine heatmaps side by side with one shared colour bar."""
    k = min(len(maps), limit)
    cols = min(k, 4)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False,
                             layout="constrained")  # fmt: skip
    im = None
    for i, ax in enumerate(axes.flat):
        if i < k:
            im = heatmap(ax, maps[i], titles[i], labels, colorbar=False)
        else:
            ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="cosine")
    return fig


def summary_lines(result: LayersResult) -> list[str]:
    """What the CLI prints: cosine summaries per space, CKA with CIs, variance, depth curve."""
    lines = []
    for space in result.prompts_by_space or {result.space: result.prompts}:
        lines += [f"{kind} ({space}): mean cosine between consecutive layers {v:.3f}"
                  for kind, v in result.adjacent_cosine(space).items()]  # fmt: skip
        lines += _token_cosine_lines(result, space)
    for kind, c in result.cka.items():
        adj = np.diagonal(np.asarray(c["matrix"]), 1)
        if not adj.size:
            continue
        text = (f"{kind}: linear CKA ({c['space']}) of consecutive layers, mean {adj.mean():.3f} "
                f"(min {adj.min():.3f}) over {c['n_tokens']} tokens")  # fmt: skip
        if "ci_low" in c:
            lo, hi = (
                np.diagonal(np.asarray(c["ci_low"]), 1),
                np.diagonal(np.asarray(c["ci_high"]), 1),
            )
            i = int(np.argmax(hi - lo))
            text += (f"; widest 95% CI [{lo[i]:.3f}, {hi[i]:.3f}] (bootstrap over "
                     f"{c['bootstrap']['n_contexts']} contexts)")  # fmt: skip
        lines.append(text)
    var = result.cka.get("resid", {}).get("variance")
    if var:
        top1 = np.asarray(var["top1_variance_share"])
        lines.append(f"resid: share of a layer's variance in its top dimension {top1.min():.2f}-"
                     f"{top1.max():.2f}, in its top 3 up to {max(var['top3_variance_share']):.2f}; "
                     f"the corpus mean carries {min(var['mean_norm_share']):.2f}-"
                     f"{max(var['mean_norm_share']):.2f} of a token's squared norm")  # fmt: skip
    if result.depth is not None:
        d = result.depth
        ev = d["heldout_explained_variance"]
        lines.append(f"depth curve: {d['source_hook']} explains {ev[0]:.3f} of "
                     f"{d['target_hooks'][0]}, {ev[-1]:.3f} of {d['target_hooks'][-1]} "
                     "(held-out, per-dim EV)")  # fmt: skip
    return lines


def _token_cosine_lines(result: LayersResult, space: str) -> list[str]:
    lines = []
    for kind, per_layer in result.token_cosine(space).items():
        labels = result.layers if kind == "resid" else result.sae_layers
        vals = [(v, x) for v, x in zip(per_layer, labels, strict=True) if v is not None]
        if vals:
            (lo, at_lo), (hi, at_hi) = min(vals), max(vals)
            spread = (
                f"at layer {at_lo}"
                if len(vals) == 1
                else f"from {lo:.3f} (layer {at_lo}) to {hi:.3f} (layer {at_hi})"
            )
            lines.append(f"{kind} ({space}): mean cosine between different tokens (BOS left "
                         f"out) {np.mean([v for v, _ in vals]):.3f}, {spread}")  # fmt: skip
    return lines
