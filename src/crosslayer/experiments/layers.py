"""Consistency across layers (study B, experiment 1).

Prompt level, as the study did: for each prompt, a layer x layer cosine matrix per token and a
token x token cosine matrix per layer, on raw residuals and on SAE latents where an SAE is
given. Layer x layer cosines of SAE latents compare different dictionaries (latent i of one
SAE is unrelated to latent i of another); they are reproduced for comparison only.

Corpus level, over many tokens of an activation store: linear CKA between every pair of layers
(basis-free, so it is meaningful for SAE codes too), and the depth curve of how much of each
layer an affine map from the embeddings explains (:func:`crosslayer.experiments.depth.depth_sweep`,
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
from crosslayer.experiments.output import heatmap, write_results
from crosslayer.experiments.reps import (
    SaeSite,
    SaeSpec,
    check_layers,
    resid_hook,
    sae_sites,
    sequence_reps,
)
from crosslayer.experiments.similarity import cka_matrix, cosine_matrix
from crosslayer.model import LoadedModel
from crosslayer.provenance import versions
from crosslayer.stage_configs import LayersConfig

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


@dataclass
class LayersResult:
    config: dict[str, Any]
    layers: list[int]
    prompts: list[dict[str, PromptMaps]]  # per prompt: "resid" / "sae" -> maps
    sae_layers: list[int] = field(default_factory=list)
    cka: dict[str, Any] = field(default_factory=dict)  # kind -> {hooks, matrix, n_tokens}
    depth: dict[str, Any] | None = None  # DepthCurve.to_dict()
    model: dict[str, Any] = field(default_factory=dict)

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
        return {"config": self.config, "model": self.model, "versions": versions(),
                "layers": self.layers, "sae_layers": self.sae_layers,
                "adjacent_layer_cosine": self.adjacent_cosine(),
                "mean_token_cosine": self.token_cosine(), "cka": self.cka,
                "depth": self.depth, "prompts": prompts}  # fmt: skip

    def adjacent_cosine(self) -> dict[str, float]:
        """Mean cosine between consecutive layers over all tokens of all prompts, per kind."""
        out = {}
        for kind in ("resid", "sae"):
            vals = [np.diagonal(p[kind].layer_by_layer, 1, 1, 2) for p in self.prompts if kind in p]
            if vals and all(v.size for v in vals):
                out[kind] = float(np.nanmean(np.concatenate([v.ravel() for v in vals])))
        return out

    def token_cosine(self) -> dict[str, list[float | None]]:
        """Per kind and layer: mean cosine between different tokens of a prompt (BOS left out),
        over all prompts. Near 1 means that layer's vectors share one dominant direction, so
        raw cosines say little about how tokens differ (linear CKA centres; cosines do not)."""
        out: dict[str, list[float | None]] = {}
        for kind in ("resid", "sae"):
            maps = [p[kind] for p in self.prompts if kind in p]
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


def prompt_maps(
    model: LoadedModel, prompt: str, layers: list[int], sites: Mapping[int, SaeSite]
) -> dict[str, PromptMaps]:
    """Cosine maps of one prompt (BOS first) on residuals and, where given, SAE latents."""
    tok = model.tokenizer
    ids = tok(prompt, add_special_tokens=False).input_ids
    if not ids:
        raise CrosslayerError(f"prompt {prompt!r} has no tokens", "give non-empty prompts")
    bos = tok.bos_token_id is not None
    if bos:
        ids = [tok.bos_token_id, *ids]
    reps = sequence_reps(model, ids, layers, sites)
    labels = [str(tok.decode([i])) for i in ids]
    out = {}
    for kind, per_layer in reps.items():
        if not per_layer:
            continue
        stack = [per_layer[x] for x in layers if x in per_layer]  # L x [T, d]
        same_width = len({r.shape[1] for r in stack}) == 1
        by_token = (
            np.stack([cosine_matrix(torch.stack([r[t] for r in stack])) for t in range(len(ids))])
            if same_width
            else np.zeros((len(ids), 0, 0))
        )
        by_layer = np.stack([cosine_matrix(r) for r in stack])
        out[kind] = PromptMaps(labels, by_token, by_layer, bos)
    return out


def corpus_cka(
    store: Any, hooks: Sequence[str], *, sites: Sequence[SaeSite] = (), max_tokens: int = 4096,
    seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Linear CKA between every pair of hooks over ``max_tokens`` store tokens (a seeded random
    subset, the same tokens for every hook); SAE codes are the SAEs' encodings of the same rows."""
    rng = np.random.default_rng(seed)
    n = len(store.tokens)
    rows = np.sort(rng.choice(n, size=min(n, max_tokens), replace=False))
    acts = {h: np.asarray(store.activations(h)[rows], np.float32) for h in hooks}
    out: dict[str, Any] = {
        "resid": {
            "hooks": list(hooks),
            "n_tokens": len(rows),
            "matrix": cka_matrix([acts[h] for h in hooks]),
        }
    }
    if sites:
        codes = []
        for s in sites:
            x = torch.as_tensor(np.asarray(store.activations(s.hook)[rows], np.float32))
            with torch.inference_mode():
                codes.append(s.sae.encode(x.to(s.sae.device, s.sae.dtype)).float().cpu().numpy())
        out["sae"] = {"hooks": [s.hook for s in sites], "layers": [s.layer for s in sites],
                      "n_tokens": len(rows), "matrix": cka_matrix(codes)}  # fmt: skip
    return out


def run_layers(
    model: LoadedModel,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    *,
    layers: Sequence[int] | None = None,
    saes: Mapping[int, SaeSpec] | str | Path | None = None,
    sae_on_residual: bool = False,
    store: Any = None,
    depth_source: str = "hook_embed",
    max_tokens: int = 4096,
    seed: int = 0,
    out: str | Path | None = None,
) -> LayersResult:
    """Prompt-level cosine maps, and with a ``store`` (an ActivationStore or its path) the
    corpus-level CKA matrix and embedding depth curve over its ``resid_post`` hooks."""
    if not prompts or any(not p.strip() for p in prompts):
        raise CrosslayerError("a prompt is empty", "give non-empty prompts")
    layer_list = check_layers(model, layers)
    sites = sae_sites(model, saes, layers=layer_list, sae_on_residual=sae_on_residual)
    config = LayersConfig(
        prompts=list(prompts), layers=layer_list, sae_on_residual=sae_on_residual,
        store=None if store is None else str(getattr(store, "path", store)),
        depth_source=depth_source, max_tokens=max_tokens, seed=seed,
    ).model_dump()  # fmt: skip
    result = LayersResult(
        config,
        layer_list,
        [prompt_maps(model, p, layer_list, sites) for p in prompts],
        sae_layers=sorted(sites),
        model=model.identity,
    )
    if store is not None:
        result.cka, result.depth = _corpus(store, layer_list, sites, depth_source, max_tokens, seed)
    if out is not None:
        write_results(out, result.to_dict(), _figures(result))
    return result


def _corpus(
    store: Any, layers: list[int], sites: Mapping[int, SaeSite], source: str, max_tokens: int,
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any] | None]:  # fmt: skip
    from crosslayer.experiments.depth import depth_sweep
    from crosslayer.store import open_store

    if isinstance(store, str | Path):
        store = open_store(store)
    hooks = [resid_hook(x) for x in layers if resid_hook(x) in store.hooks]
    if len(hooks) < 2:
        raise CrosslayerError(
            f"the store holds {len(hooks)} of the resid_post hooks of layers {layers}",
            "collect blocks.L.hook_resid_post for the layers you ask for",
        )
    in_store = [s for s in sites.values() if s.hook in store.hooks]
    cka = corpus_cka(store, hooks, sites=in_store, max_tokens=max_tokens, seed=seed)
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
                    m.layer_by_layer, [f"token {t}: {s!r}" for t, s in enumerate(m.tokens)],
                    labels)  # fmt: skip
            figs[f"prompt{p}_{kind}_token_by_token"] = _grid(
                m.token_by_token, [f"layer {x}" for x in labels], m.tokens)  # fmt: skip
    for kind, c in result.cka.items():
        if len(c["hooks"]) < 2:
            continue
        fig, ax = plt.subplots(figsize=(5, 4.3))
        heatmap(ax, c["matrix"], f"linear CKA ({kind}, {c['n_tokens']} tokens)",
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
    lines = [f"{kind}: mean cosine between consecutive layers {v:.3f}"
             for kind, v in result.adjacent_cosine().items()]  # fmt: skip
    for kind, c in result.cka.items():
        adj = np.diagonal(np.asarray(c["matrix"]), 1)
        if not adj.size:
            continue
        lines.append(f"{kind}: linear CKA of consecutive layers, mean {adj.mean():.3f} "
                     f"(min {adj.min():.3f}) over {c['n_tokens']} tokens")  # fmt: skip
    for kind, per_layer in result.token_cosine().items():
        labels = result.layers if kind == "resid" else result.sae_layers
        vals = [(v, x) for v, x in zip(per_layer, labels, strict=True) if v is not None]
        if vals:
            (lo, at_lo), (hi, at_hi) = min(vals), max(vals)
            spread = (
                f"at layer {at_lo}"
                if len(vals) == 1
                else f"from {lo:.3f} (layer {at_lo}) to {hi:.3f} (layer {at_hi})"
            )
            lines.append(f"{kind}: mean cosine between different tokens (BOS left out) "
                         f"{np.mean([v for v, _ in vals]):.3f}, {spread}")  # fmt: skip
    if result.depth is not None:
        d = result.depth
        ev = d["heldout_explained_variance"]
        lines.append(f"depth curve: {d['source_hook']} explains {ev[0]:.3f} of "
                     f"{d['target_hooks'][0]}, {ev[-1]:.3f} of {d['target_hooks'][-1]} "
                     "(held-out, per-dim EV)")  # fmt: skip
    return lines
