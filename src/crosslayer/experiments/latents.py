"""What one SAE latent is: top-activating store contexts, promoted tokens, density, link.

Shared by ``crosslayer interpret`` and the report. Promoted tokens are the decoder direction
pushed through the unembedding (``W_dec[i] @ W_U``, the direct effect on the logits, final norm
ignored). Contexts come from an activation store holding the hook the SAE reads.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from crosslayer.errors import CrosslayerError
from crosslayer.experiments.reps import SaeSite
from crosslayer.model import LoadedModel


@dataclass
class LatentInfo:
    layer: int
    index: int
    promoted: list[tuple[str, float]]  # top tokens of W_dec[i] @ W_U with their logit weight
    neuronpedia: str | None = None
    density: float | None = None  # share of store tokens where the latent is active
    contexts: list[dict[str, Any]] = field(default_factory=list)  # {tokens, acts, max}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def logit_directions(site: SaeSite, model: LoadedModel, indices: list[int]) -> torch.Tensor:
    """``[len(indices), vocab]`` direct logit effect of each latent's decoder row."""
    w_u = model.unembed().float().cpu()
    return site.sae.W_dec[indices].detach().float().cpu() @ w_u


def promoted_tokens(site: SaeSite, model: LoadedModel, index: int, k: int = 10) -> list[int]:
    """Ids of the ``k`` tokens the latent's decoder direction promotes most."""
    return logit_directions(site, model, [index])[0].topk(k).indices.tolist()


def neuronpedia_link(sae: Any, index: int) -> str | None:
    """Dashboard link when the SAE is a Gemma Scope release Neuronpedia hosts, else None."""
    if not getattr(sae.cfg.metadata, "neuronpedia_id", None):
        return None
    from crosslayer.sae import neuronpedia_url

    return neuronpedia_url(sae, index)


def describe(
    model: LoadedModel,
    sites: Mapping[int, SaeSite],
    wanted: Mapping[int, list[int]],
    *,
    store: Any = None,
    n_promoted: int = 10,
    n_contexts: int = 5,
    window: int = 8,
    batch_size: int = 4096,
) -> list[LatentInfo]:
    """A :class:`LatentInfo` for every ``wanted[layer]`` latent."""
    tok = model.tokenizer
    out = []
    for layer, indices in wanted.items():
        site = sites[layer]
        logits = logit_directions(site, model, indices)
        top = logits.topk(n_promoted, dim=-1)
        infos = [
            LatentInfo(
                layer,
                i,
                [
                    (str(tok.decode([t])), float(v))
                    for t, v in zip(ids.tolist(), vals.tolist(), strict=True)
                ],
                neuronpedia_link(site.sae, i),
            )
            for i, ids, vals in zip(indices, top.indices, top.values, strict=True)
        ]
        if store is not None:
            _add_store_view(infos, site, store, tok, n_contexts, window, batch_size)
        out += infos
    return out


def _add_store_view(
    infos: list[LatentInfo], site: SaeSite, store: Any, tok: Any, n_contexts: int, window: int,
    batch_size: int,
) -> None:  # fmt: skip
    """Density and top contexts from the store: one pass encoding ``site.hook`` activations."""
    if site.hook not in store.hooks:
        raise CrosslayerError(
            f"the store has no {site.hook} activations (the SAE for layer {site.layer} reads it)",
            f"collect {site.hook} into the store, or run without --store",
        )
    cols = [info.index for info in infos]
    parts = []
    for batch in store.iter_batches([site.hook], split=None, batch_size=batch_size):
        x = torch.as_tensor(batch[site.hook]).to(site.sae.device, site.sae.dtype)
        with torch.inference_mode():
            parts.append(site.sae.encode(x)[:, cols].float().cpu().numpy())
    acts = np.concatenate(parts)  # [n_tokens, len(cols)], in store order
    ctx, pos, tokens = store.context_ids, store.positions, store.tokens
    for j, info in enumerate(infos):
        info.density = float(np.mean(acts[:, j] > 0))
        for row in np.argsort(-acts[:, j], kind="stable")[:n_contexts]:
            if acts[row, j] <= 0:
                break
            near = np.flatnonzero(
                (ctx == ctx[row]) & (pos >= pos[row] - window) & (pos <= pos[row] + 2)
            )
            info.contexts.append({
                "tokens": [tok.decode([int(t)]) for t in tokens[near]],
                "acts": [float(a) for a in acts[near, j]],
                "max": float(acts[row, j]),
            })  # fmt: skip


def to_html(infos: list[LatentInfo]) -> str:
    """A self-contained page: each latent's promoted tokens and highlighted contexts."""
    parts = ["<html><meta charset='utf-8'><body style='font-family:sans-serif'>"]
    for info in infos:
        link = f" <a href='{info.neuronpedia}'>Neuronpedia</a>" if info.neuronpedia else ""
        dens = "n/a" if info.density is None else f"{info.density:.4%}"
        promoted = ", ".join(html.escape(repr(t)) for t, _ in info.promoted)
        parts.append(f"<h3>layer {info.layer} latent {info.index}{link}</h3>"
                     f"<p>density {dens}; promotes {promoted}</p>")  # fmt: skip
        for c in info.contexts:
            spans = "".join(
                f"<span style='background:rgba(255,120,0,{a / c['max']:.2f})'>"
                f"{html.escape(t)}</span>"
                for t, a in zip(c["tokens"], c["acts"], strict=True)
            )
            parts.append(f"<p style='font-family:monospace'>{spans}</p>")
    return "\n".join([*parts, "</body></html>"])
