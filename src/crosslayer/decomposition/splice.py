"""What the predictable part does to the model: splice a prediction in place of the layer.

Each predictor's out-of-fold output replaces the layer at every text position of a sample
of the store's contexts (BOS keeps its clean value: it is never a store row) and the model
runs on from there. Scored at every position ``t`` whose next token is a text token:

* ``ce_loss_recovered = (CE_ablation - CE_spliced) / (CE_ablation - CE_clean)``, SAELens's
  form, with mean ablation = the layer's mean over all store rows: 1 for an exact predictor,
  about 0 for the training mean;
* ``kl``: mean ``KL(p_clean || p_spliced)`` of the next-token distributions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from crosslayer.errors import CrosslayerError
from crosslayer.model import LoadedModel


@dataclass
class SpliceContexts:
    """Contexts rebuilt from store rows: ``[BOS] + tokens``, right-padded."""

    input_ids: np.ndarray  # [C, L] int64
    mask: np.ndarray  # [C, L] bool: positions that are store rows (replaced)
    rows: np.ndarray  # [mask.sum()] store rows, in np.nonzero(mask) order (= store order)


def splice_contexts(
    tokens: np.ndarray,
    positions: np.ndarray,
    context_ids: np.ndarray,
    *,
    bos_id: int,
    pad_id: int,
    n_contexts: int,
    seed: int = 0,
) -> SpliceContexts:
    """A seeded sample of ``n_contexts`` whole contexts whose rows are positions 1 … L.

    Contexts with a gap (a special token inside the text is not a store row) or split across
    the sample are skipped: their input could not be rebuilt exactly.
    """
    ctx = np.asarray(context_ids)
    starts = np.flatnonzero(np.r_[True, ctx[1:] != ctx[:-1]])
    ends = np.r_[starts[1:], len(ctx)]
    ok = [
        i
        for i, (a, b) in enumerate(zip(starts, ends, strict=True))
        if np.array_equal(positions[a:b], np.arange(1, b - a + 1)) and b - a >= 2
    ]
    if not ok:
        raise CrosslayerError(
            "no context in the store can be rebuilt from its rows",
            "collect a store with whole contexts (crosslayer collect writes them)",
        )
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(ok, size=min(n_contexts, len(ok)), replace=False))
    L = int(max(ends[i] - starts[i] for i in pick)) + 1
    ids = np.full((len(pick), L), pad_id, dtype=np.int64)
    mask = np.zeros((len(pick), L), dtype=bool)
    rows = []
    for c, i in enumerate(pick):
        a, b = starts[i], ends[i]
        ids[c, 0], ids[c, 1 : b - a + 1] = bos_id, tokens[a:b]
        mask[c, 1 : b - a + 1] = True
        rows.append(np.arange(a, b))
    return SpliceContexts(ids, mask, np.concatenate(rows))


def _logprobs(logits: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities at every position, ``[C * L, vocab]`` float32. Computed
    for all positions and indexed afterwards: copying out the scored rows of a ``[n, 262k]``
    array costs as much as the softmax itself, and nearly every position is scored."""
    return torch.log_softmax(logits.flatten(0, 1).float(), dim=-1)


def _row_dot(a: torch.Tensor, b: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """``(a * b).sum(1)`` in float64 from float32 rows: a batched product over runs of
    ``chunk`` columns, the runs' sums added in float64. One read of each input and no
    ``[n, vocab]`` temporary: 50-66 ms against 240-290 ms for the product and sum at Gemma's
    vocabulary, within 5e-6 of float64 (a single product over all 262k columns is no faster
    and drifts by 6e-3; benchmarks/bench_kernels.py). A vocabulary not divisible by ``chunk``
    takes the float64 product."""
    n, v = a.shape
    if v % chunk:
        return (a.double() * b.double()).sum(1)
    runs = torch.bmm(a.reshape(-1, 1, chunk), b.reshape(-1, chunk, 1))
    return runs.view(n, -1).double().sum(1)


def _clean(lm: LoadedModel, ids: torch.Tensor, hook: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean run's logits and the hook's value at every position."""
    seen: list[torch.Tensor] = []

    def keep(value: torch.Tensor) -> torch.Tensor:
        seen.append(value.clone())
        return value

    return lm.run_with_replacement(ids, hook=hook, fn=keep), seen[0]


def _spliced(
    lm: LoadedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    hook: str,
    clean: torch.Tensor,
    rows: np.ndarray,
) -> torch.Tensor:
    """Logits with the hook's value at ``mask`` replaced by ``rows``; the rest is the clean
    run's. The blocks up to the hook are not run again (:meth:`LoadedModel.run_from`): every
    variant of a batch (mean ablation and each prediction) shares the clean prefix."""
    value = clean.clone()
    value[mask] = torch.from_numpy(np.array(rows, dtype=np.float32)).to(value)
    return lm.run_from(ids, hook=hook, value=value)


def splice_scores(
    lm: LoadedModel,
    contexts: SpliceContexts,
    hook: str,
    predictions: Mapping[str, np.ndarray],
    ablation: np.ndarray,
    *,
    batch_size: int = 4,
) -> dict[str, Any]:
    """CE loss recovered and KL of every prediction (``[len(contexts.rows), d]`` each)."""
    n = len(contexts.rows)
    for name, p in predictions.items():
        if p.shape[0] != n:
            raise CrosslayerError(
                f"prediction {name!r} has {p.shape[0]} rows for {n} spliced positions",
                "pass one row per store row of the contexts (SpliceContexts.rows)",
            )
    variants = {"mean_ablation": np.broadcast_to(ablation, (n, len(ablation))), **predictions}
    ce = {k: 0.0 for k in ["clean", *variants]}
    kl = {k: 0.0 for k in variants}
    scored = 0
    offsets = np.r_[0, np.cumsum(contexts.mask.sum(1))]
    for c0 in range(0, len(contexts.input_ids), batch_size):
        c1 = min(c0 + batch_size, len(contexts.input_ids))
        ids = torch.as_tensor(contexts.input_ids[c0:c1], device=lm.device)
        mask = torch.as_tensor(contexts.mask[c0:c1], device=lm.device)
        at = mask[:, :-1] & mask[:, 1:]  # positions whose next token is a text token
        at_flat = torch.nn.functional.pad(at, (0, 1)).flatten()
        r0, r1 = offsets[c0], offsets[c1]
        # each position's next token (the pad value after the last: never scored)
        nxt = torch.nn.functional.pad(ids[:, 1:], (0, 1)).flatten()[:, None]
        logits, value = _clean(lm, ids, hook)
        clean = _logprobs(logits)
        del logits
        p_clean = clean.exp()
        neg_entropy = _row_dot(p_clean, clean)[at_flat]
        ce["clean"] -= float(clean.gather(1, nxt).flatten()[at_flat].double().sum())
        for name, pred in variants.items():
            lp = _logprobs(_spliced(lm, ids, mask, hook, value, pred[r0:r1]))
            ce[name] -= float(lp.gather(1, nxt).flatten()[at_flat].double().sum())
            # KL(p_clean || p) = sum p_clean log p_clean - sum p_clean log p, per position
            kl[name] += float((neg_entropy - _row_dot(p_clean, lp)[at_flat]).sum())
            del lp
        scored += int(at.sum())
    if scored == 0:
        raise CrosslayerError("no scored position in the spliced contexts", "use longer contexts")
    mean_ce = {k: v / scored for k, v in ce.items()}
    gap = mean_ce["mean_ablation"] - mean_ce["clean"]
    out: dict[str, Any] = {
        name: {
            "ce": mean_ce[name],
            "ce_loss_recovered": (mean_ce["mean_ablation"] - mean_ce[name]) / gap
            if gap != 0
            else float("nan"),
            "kl": kl[name] / scored,
        }
        for name in predictions
    }
    out["clean_ce"] = mean_ce["clean"]
    out["mean_ablation_ce"] = mean_ce["mean_ablation"]
    out["mean_ablation_kl"] = kl["mean_ablation"] / scored
    out["n_contexts"] = len(contexts.input_ids)
    out["n_scored"] = scored
    return out
