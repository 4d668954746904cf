"""What one SAE latent is: top-activating store contexts, promoted tokens, density, link.

Shared by ``crosslayer interpret`` and the report. Promoted tokens are the decoder direction
pushed through the final norm's gain and the unembedding (``(W_dec[i] * gain) @ W_U``,
:meth:`LoadedModel.direction_logits`: the direct effect on the logits at fixed RMS). Gemma 3's
gain spans 0.2 to 300, so leaving it out mis-ranks most tokens. Contexts come from an
activation store holding the hook the SAE reads.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from crosslayer.errors import CrosslayerError
from crosslayer.experiments.reps import SaeSite
from crosslayer.model import LoadedModel
from crosslayer.sae import neuronpedia_url


@dataclass
class LatentInfo:
    layer: int
    index: int
    promoted: list[tuple[str, float]]  # top tokens of (W_dec[i] * gain) @ W_U, logit weights
    neuronpedia: str | None = None
    density: float | None = None  # share of store tokens where the latent is active
    contexts: list[dict[str, Any]] = field(default_factory=list)  # {tokens, acts, max}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def logit_directions(site: SaeSite, model: LoadedModel, indices: list[int]) -> torch.Tensor:
    """``[len(indices), vocab]`` direct logit effect of each latent's decoder row, through the
    final norm's gain (:meth:`LoadedModel.direction_logits`)."""
    with torch.inference_mode():
        rows = site.sae.W_dec[indices].detach().to(model.device, torch.float32)
        return model.direction_logits(rows).cpu()


def promoted_tokens(site: SaeSite, model: LoadedModel, index: int, k: int = 10) -> list[int]:
    """Ids of the ``k`` tokens the latent's decoder direction promotes most."""
    return PromotedTokens(site, model, k).top(index)[0]


class PromotedTokens:
    """The ``k`` most promoted tokens (``(W_dec[i] * gain) @ W_U``) of latents of one SAE, each
    latent computed once.

    A row of the product spans the whole vocabulary (262k for Gemma), and each product reads all
    of W_U: latents are done in chunks, so a thousand latents cost a few passes over W_U rather
    than one per caller (the per-group recomputation made ``interpret`` slow).
    """

    def __init__(self, site: SaeSite, model: LoadedModel, k: int, chunk: int = 256) -> None:
        self.site, self.model, self.k, self.chunk = site, model, k, chunk
        self._top: dict[int, tuple[list[int], list[float]]] = {}

    def ensure(self, indices: Iterable[int]) -> None:
        """Compute the top tokens of every latent in ``indices`` not done yet."""
        todo = sorted(set(indices) - self._top.keys())
        if not todo:
            return
        w_dec = self.site.sae.W_dec.detach()
        for start in range(0, len(todo), self.chunk):
            part = todo[start : start + self.chunk]
            with torch.inference_mode():
                rows = w_dec[part].to(self.model.device, torch.float32)
                top = self.model.direction_logits(rows).topk(self.k, dim=-1)
            ids, vals = top.indices.cpu().tolist(), top.values.cpu().tolist()
            self._top.update(zip(part, zip(ids, vals, strict=True), strict=True))

    def top(self, index: int, k: int | None = None) -> tuple[list[int], list[float]]:
        """Token ids and logit weights of the ``k`` (default: all computed) most promoted."""
        self.ensure([index])
        ids, vals = self._top[index]
        return ids[:k], vals[:k]

    def promotes_any(self, indices: Iterable[int], tokens: set[int], k: int) -> bool:
        """Does any latent in ``indices`` rank one of ``tokens`` among its ``k`` top tokens?"""
        indices = list(indices)
        self.ensure(indices)
        return any(t in tokens for i in indices for t in self._top[i][0][:k])


def neuronpedia_link(sae: Any, index: int) -> str | None:
    """Dashboard link when the SAE is a Gemma Scope release Neuronpedia hosts, else None."""
    if not getattr(sae.cfg.metadata, "neuronpedia_id", None):
        return None

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
    promoted: Mapping[int, PromotedTokens] | None = None,
) -> list[LatentInfo]:
    """A :class:`LatentInfo` for every ``wanted[layer]`` latent. ``promoted`` reuses top tokens
    already computed per layer (with ``k >= n_promoted``)."""
    tok = model.tokenizer
    decode = _Decoder(tok)
    out = []
    for layer, indices in wanted.items():
        site = sites[layer]
        cache = (promoted or {}).get(layer)
        if cache is None or cache.k < n_promoted:
            cache = PromotedTokens(site, model, n_promoted)
        cache.ensure(indices)
        infos = []
        for i in indices:
            ids, vals = cache.top(i, n_promoted)
            pairs = [(decode(t), float(v)) for t, v in zip(ids, vals, strict=True)]
            infos.append(LatentInfo(layer, i, pairs, neuronpedia_link(site.sae, i)))
        if store is not None:
            _add_store_view(infos, site, store, decode, n_contexts, window, batch_size)
        out += infos
    return out


class _Decoder:
    """``tokenizer.decode([id])`` with a cache: contexts repeat the same tokens many times."""

    def __init__(self, tok: Any) -> None:
        self.tok, self.cache = tok, dict[int, str]()

    def __call__(self, token: int) -> str:
        token = int(token)
        if token not in self.cache:
            self.cache[token] = str(self.tok.decode([token]))
        return self.cache[token]


def _add_store_view(
    infos: list[LatentInfo], site: SaeSite, store: Any, decode: _Decoder, n_contexts: int,
    window: int, batch_size: int,
) -> None:  # fmt: skip
    """Density and top contexts from the store: one pass encoding ``site.hook`` activations.

    The wanted latents' codes are kept sparse (SAE codes are mostly zero), so the pass costs
    memory in proportion to the active entries, and every latent's top rows come from its own
    non-zeros instead of a sort over all store tokens.
    """
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
            parts.append(sp.csr_matrix(site.sae.encode(x)[:, cols].float().cpu().numpy()))
    acts = sp.vstack(parts).tocsc()  # [n_tokens, len(cols)], in store order
    acts.sort_indices()
    n_tokens = acts.shape[0]
    ctx, pos, tokens = store.context_ids, store.positions, store.tokens
    # rows sorted by (context, position): a context's window is one contiguous slice
    pos = pos.astype(np.int64)
    last = int(pos.max()) if n_tokens else 0
    order = np.lexsort((pos, ctx))
    key = ctx[order].astype(np.int64) * (last + 1) + pos[order]
    for j, info in enumerate(infos):
        rows = acts.indices[acts.indptr[j] : acts.indptr[j + 1]]
        vals = acts.data[acts.indptr[j] : acts.indptr[j + 1]]
        info.density = float(np.sum(vals > 0) / n_tokens)
        # descending activation, ties by store row (as a stable sort over all rows would give)
        for r in np.lexsort((rows, -vals))[:n_contexts]:
            if vals[r] <= 0:
                break
            row, base = rows[r], int(ctx[rows[r]]) * (last + 1)
            lo = np.searchsorted(key, base + max(pos[row] - window, 0), "left")
            hi = np.searchsorted(key, base + min(pos[row] + 2, last), "right")
            near = np.sort(order[lo:hi])
            at = np.searchsorted(rows, near)
            hit = (at < len(rows)) & (rows[np.minimum(at, len(rows) - 1)] == near)
            near_acts = np.where(hit, vals[np.minimum(at, len(rows) - 1)], 0.0)
            info.contexts.append({
                "tokens": [decode(t) for t in tokens[near]],
                "acts": [float(a) for a in near_acts],
                "max": float(vals[r]),
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
