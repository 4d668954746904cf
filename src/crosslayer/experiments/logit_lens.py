"""A logit lens per layer: how early are the next token and the PARAREL answer predictable?

Every block's residual (``blocks.L.hook_resid_post``) is read out as if it were the last one:
through the model's own final norm and unembedding (``lm_head(norm(h))``, the final norm
included; without it Gemma 3's lens never ranks the answer top-10, the gain spans 0.2 to 300).
At the last block this is the model's own prediction, exactly. Two more read-outs:

* SAE: where an SAE is given for block L and reads ``hook_resid_post`` or ``hook_mlp_out`` of
  that block (the last addition to the residual), the residual with that hook's value replaced
  by its SAE reconstruction. It answers "does the SAE keep what predicts the next token".
* translator (opt-in, a tuned-lens style affine map): the last block's residual predicted from
  block L's by the project's cross-fitted ridge (:class:`crosslayer.crossfit.CrossFitRidge`,
  alpha per output dimension by grouped inner CV), every row predicted out of fold, folds by
  fact group (paraphrases of one fact share a fold). It removes the basis mismatch that makes
  the plain lens fail at early blocks.

Rows: "next_token" rows are a seeded sample of positions of the prompts (BOS left out) with the
token that follows as target; "answer" rows are the token before each prompt's answer with the
answer's first token as target (prompts that start with the answer are left out: the token
before is BOS). Ranks are 0 = top; shares carry 95% bootstrap intervals over fact groups.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from crosslayer.errors import CrosslayerError
from crosslayer.experiments.reps import SaeSite, resid_hook
from crosslayer.model import LoadedModel

DEFINITION = (
    "rank (0 = top) of the target token in lm_head(final_norm(h)) for h the residual after "
    "block L (residual), that residual with the SAE's hook replaced by its reconstruction (sae), "
    "or the last block's residual predicted from block L's by a cross-fitted ridge, out of fold "
    "by fact group (translator); top1/top10 are shares of rows, 95% bootstrap over fact groups"
)
TRANSLATOR_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-4, 2, 7))


@dataclass(frozen=True)
class LensRows:
    """The positions read: ``seq[i]``'s position ``pos[i]`` predicting ``target[i]``."""

    seq: np.ndarray
    pos: np.ndarray
    target: np.ndarray
    group: np.ndarray
    kind: np.ndarray  # "next_token" or "answer"


def lens_rows(
    seqs: Sequence[Sequence[int]],
    answer_pos: Sequence[int],
    groups: Sequence[int],
    *,
    first: int = 1,
    max_next: int = 1000,
    seed: int = 0,
) -> LensRows:
    """Next-token rows (a seeded sample of at most ``max_next`` positions ``first .. T-2``) and
    answer rows (position ``answer_pos - 1`` when that is at least ``first``)."""
    cand = [(i, t) for i, s in enumerate(seqs) for t in range(first, len(s) - 1)]
    rng = np.random.default_rng(seed)
    if len(cand) > max_next:
        cand = [cand[j] for j in sorted(rng.choice(len(cand), max_next, replace=False))]
    ans = [(i, p - 1) for i, p in enumerate(answer_pos) if p - 1 >= first]
    both = cand + ans
    seq = np.array([i for i, _ in both], dtype=np.int64)
    pos = np.array([t for _, t in both], dtype=np.int64)
    return LensRows(
        seq, pos, np.array([seqs[i][t + 1] for i, t in both], dtype=np.int64),
        np.asarray(groups, dtype=np.int64)[seq] if len(seq) else np.zeros(0, np.int64),
        np.array(["next_token"] * len(cand) + ["answer"] * len(ans)),
    )  # fmt: skip


def capture_rows(
    model: LoadedModel, seqs: Sequence[Sequence[int]], rows: LensRows, hooks: Sequence[str],
    batch_size: int = 32,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """``{hook: [n_rows, d]}`` float32 at the rows' positions; equal-length sequences share a
    forward (no padding)."""
    need = sorted(set(rows.seq.tolist()))
    by_len: dict[int, list[int]] = {}
    for i in need:
        by_len.setdefault(len(seqs[i]), []).append(i)
    out = {h: torch.zeros(len(rows.seq), model.d_model) for h in hooks}
    for idx in by_len.values():
        for start in range(0, len(idx), batch_size):
            part = idx[start : start + batch_size]
            acts = model.run_with_hooks(torch.tensor([list(seqs[i]) for i in part]), hooks=hooks)
            where = {s: j for j, s in enumerate(part)}
            mask = np.isin(rows.seq, part)
            r = np.flatnonzero(mask)
            b = torch.tensor([where[int(s)] for s in rows.seq[r]], dtype=torch.long)
            p = torch.as_tensor(rows.pos[r])
            for h in hooks:
                out[h][torch.as_tensor(r)] = acts[h][b, p].float().cpu()
    return out


def lens_ranks(
    model: LoadedModel, h: torch.Tensor, targets: np.ndarray, chunk: int = 128
) -> np.ndarray:
    """Rank of each target in ``lm_head(final_norm(h))`` (the model's own modules)."""
    hf = model.model
    norm = getattr(getattr(hf, "model", hf), "norm", None)
    head = hf.get_output_embeddings()
    out = np.empty(len(h), dtype=np.int64)
    tgt = torch.as_tensor(targets, device=model.device)
    for s in range(0, len(h), chunk):
        x = h[s : s + chunk].to(model.device, model.dtype)
        with torch.inference_mode():
            logits = head(norm(x) if norm is not None else x).float()
            t = tgt[s : s + chunk]
            own = logits.gather(1, t[:, None])
            out[s : s + chunk] = (logits > own).sum(1).cpu().numpy()
    return out


def fit_translator(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, n_splits: int = 5,
    alphas: tuple[float, ...] = TRANSLATOR_ALPHAS, seed: int = 0,
) -> tuple[np.ndarray, float]:  # fmt: skip
    """Out-of-fold affine prediction of ``y [n, d]`` from ``x [n, d]`` (cross-fitted ridge,
    folds by ``groups``), and its pooled out-of-fold R² (mean over output dimensions)."""
    # local: start-up cost (crossfit loads scikit-learn, 1.2 s; only with the cross-fitted lens)
    from crosslayer.crossfit import CrossFitRidge, grouped_folds

    if len(np.unique(groups)) < n_splits:
        raise CrosslayerError(
            f"the translator needs at least {n_splits} fact groups, got {len(np.unique(groups))}",
            "give more groups, or run without --lens-translator",
        )
    folds = grouped_folds(groups, n_splits=n_splits, seed=seed)
    ridge = CrossFitRidge(alphas=alphas).fit(x, y, folds)
    return ridge.predict_oof(x), float(np.nanmean(ridge.r2_))


def grouped_share(
    flags: np.ndarray, groups: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> tuple[float, list[float]]:
    """Share of rows flagged, and its 95% bootstrap interval resampling whole groups."""
    ids, inv = np.unique(groups, return_inverse=True)
    hits = np.bincount(inv, weights=flags.astype(np.float64), minlength=len(ids))
    size = np.bincount(inv, minlength=len(ids)).astype(np.float64)
    rng = np.random.default_rng(seed)
    w = rng.multinomial(len(ids), np.full(len(ids), 1.0 / len(ids)), size=n_boot)
    boots = (w @ hits) / np.maximum(w @ size, 1.0)
    return float(hits.sum() / size.sum()), [float(v) for v in np.quantile(boots, [0.025, 0.975])]


def rank_stats(ranks: np.ndarray, groups: np.ndarray, n_boot: int = 1000) -> dict[str, Any]:
    if len(ranks) == 0:
        return {"n": 0}
    top1, ci1 = grouped_share(ranks == 0, groups, n_boot)
    top10, ci10 = grouped_share(ranks < 10, groups, n_boot, seed=1)
    return {"n": len(ranks), "n_groups": len(np.unique(groups)),
            "top1": top1, "top1_ci95": ci1, "top10": top10, "top10_ci95": ci10,
            "median_rank": float(np.median(ranks)),
            "mean_log10_rank1": float(np.mean(np.log10(ranks + 1.0)))}  # fmt: skip


def _sae_residual(site: SaeSite, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The residual with the site's hook value ``x`` replaced by its SAE reconstruction."""
    sae = site.sae
    with torch.inference_mode():
        v = x.to(sae.device, sae.dtype)
        recon = sae.decode(sae.encode(v)).float().cpu()
    return h - x + recon


def lens_site(layer: int, site: SaeSite | None) -> bool:
    """Can the SAE of this block be read through the lens (its hook is the block's residual
    or its last addition to it)?"""
    return site is not None and site.hook in (resid_hook(layer), f"blocks.{layer}.hook_mlp_out")


def run_logit_lens(
    model: LoadedModel,
    seqs: Sequence[Sequence[int]],
    answer_pos: Sequence[int],
    groups: Sequence[int],
    *,
    sites: Mapping[int, SaeSite] | None = None,
    translator: bool = False,
    max_next: int = 1000,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Lens ranks per layer for the next token and the answer (see the module docstring).

    ``seqs``: token ids with BOS first where the tokenizer has one; ``answer_pos``: index of
    each sequence's first answer token; ``groups``: its fact group (folds and bootstrap).
    Returns the ``logit_lens`` section of ``interpret``'s results.
    """
    sites = dict(sites or {})
    first = 1 if model.tokenizer.bos_token_id is not None else 0
    rows = lens_rows(seqs, answer_pos, groups, first=first, max_next=max_next, seed=seed)
    if len(rows.seq) == 0:
        raise CrosslayerError("no positions to read the logit lens at", "give longer prompts")
    last = model.n_layers - 1
    readable = {x: s for x, s in sites.items() if lens_site(x, s)}
    hooks = sorted({resid_hook(x) for x in range(model.n_layers)}
                   | {s.hook for s in readable.values()})  # fmt: skip
    acts = capture_rows(model, seqs, rows, hooks)
    y_last = acts[resid_hook(last)].numpy()
    kinds = {k: rows.kind == k for k in ("next_token", "answer")}
    out_layers: list[dict[str, Any]] = []
    for layer in range(model.n_layers):
        h = acts[resid_hook(layer)]
        reads: dict[str, np.ndarray] = {"residual": lens_ranks(model, h, rows.target)}
        entry: dict[str, Any] = {"layer": layer}
        if layer in readable:
            s = readable[layer]
            reads["sae"] = lens_ranks(model, _sae_residual(s, h, acts[s.hook]), rows.target)
        if translator and layer < last:
            pred, r2 = fit_translator(h.numpy(), y_last, rows.group, seed=seed)
            reads["translator"] = lens_ranks(model, torch.from_numpy(pred), rows.target)
            entry["translator_r2"] = r2
        for k, mask in kinds.items():
            entry[k] = {name: rank_stats(r[mask], rows.group[mask], n_boot)
                        for name, r in reads.items()}  # fmt: skip
        if translator and layer == last:  # the identity map: the translator is the model
            for k in kinds:
                entry[k]["translator"] = entry[k]["residual"]
        out_layers.append(entry)
    return {
        "definition": DEFINITION,
        "n_rows": {k: int(m.sum()) for k, m in kinds.items()},
        "sae_layers": sorted(readable),
        "sae_layers_not_readable": sorted(set(sites) - set(readable)),
        "translator": {"fitted": translator, "alphas": list(TRANSLATOR_ALPHAS), "n_splits": 5,
                       "folds_by": "fact group"} if translator else {"fitted": False},
        "layers": out_layers,
        "earliest_layer": {k: _earliest(out_layers, k) for k in kinds},
    }  # fmt: skip


def _earliest(layers: list[dict[str, Any]], kind: str) -> dict[str, int | None]:
    """Per read-out: the first layer whose top-10 share reaches half the model's own (the last
    layer's residual lens), the "how early is it predictable" figure."""
    final = layers[-1][kind]["residual"].get("top10")
    out: dict[str, int | None] = {}
    for name in ("residual", "sae", "translator"):
        hits = [
            e["layer"] for e in layers
            if name in e[kind] and final and e[kind][name].get("top10", 0) >= final / 2
        ]  # fmt: skip
        out[name] = hits[0] if hits else None
    return out


def lens_figure(section: Mapping[str, Any]) -> Any:
    """Top-10 share per layer, next token and answer, per read-out (95% bands: residual)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained", sharey=True)
    layers = section["layers"]
    x = [e["layer"] for e in layers]
    styles = {"residual": "-o", "sae": "s", "translator": "--^"}
    for ax, kind in zip(axes, ("next_token", "answer"), strict=True):
        for name, style in styles.items():
            pts = [(e["layer"], e[kind][name]) for e in layers if name in e[kind]]
            pts = [(lx, s) for lx, s in pts if s.get("n")]
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1]["top10"] for p in pts], style, label=name, ms=4)
            if name == "residual":
                lo = [p[1]["top10_ci95"][0] for p in pts]
                hi = [p[1]["top10_ci95"][1] for p in pts]
                ax.fill_between([p[0] for p in pts], lo, hi, alpha=0.2)
        n = section["n_rows"][kind]
        ax.set(xlabel="block", title=f"{kind.replace('_', ' ')} in the lens top-10 ({n} rows)",
               xticks=x, ylim=(0, 1))  # fmt: skip
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("share of rows")
    fig.suptitle("logit lens through the final norm and unembedding", fontsize=10)
    return fig
