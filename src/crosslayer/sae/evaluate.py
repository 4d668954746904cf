"""``evaluate_sae``: reconstruction and sparsity on held-out tokens, and CE loss recovered.

Explained variance follows SAELens's definition, accumulated in float64 over all tokens:

    EV = 1 - E|x - x_hat|^2 / (E|x|^2 - |E x|^2),   FVU = 1 - EV

(the denominator is the total variance around per-dimension means). CE loss recovered splices
the SAE into the model at its hook: (CE_zero - CE_sae) / (CE_zero - CE_clean), where CE_zero
zero-ablates the hook. sae-lens's ``evals.py`` computes the same quantities but through a
TransformerLens ``HookedTransformer`` and its own activation store; our models are Hugging
Face models with our hook names and our activations live in a store, so the loop is ours.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from crosslayer.errors import CrosslayerError
from crosslayer.sae.data import as_source
from crosslayer.sae.load import check_against_model


@torch.no_grad()
def evaluate_sae(
    sae: Any,
    data: Any,
    model: Any = None,
    *,
    hook: str | None = None,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    n_contexts: int = 16,
    batch_size: int = 4096,
    dense_threshold: float = 0.1,
    histogram_bins: int = 20,
) -> dict[str, Any]:
    """Metrics of ``sae`` on ``data`` (an ActivationStore's held-out split, or ``[n, d]``
    tensors). With ``model``, also CE loss recovered on ``input_ids`` (or, for a store, on up
    to ``n_contexts`` held-out contexts rebuilt from its tokens)."""
    hook = hook or sae.cfg.metadata.hook_name
    is_store = hasattr(data, "iter_batches")
    source = as_source(data, hook, split="heldout") if is_store else as_source(data)
    if source.d != sae.cfg.d_in:
        raise CrosslayerError(
            f"activations have width {source.d} but the SAE expects d_in={sae.cfg.d_in}",
            "evaluate on activations of the SAE's hook",
        )
    d_sae = sae.cfg.d_sae
    n = 0
    sq_err = 0.0
    sum_x = torch.zeros(source.d, dtype=torch.float64)
    sum_sq = 0.0
    l0_sum = 0.0
    fires = torch.zeros(d_sae, dtype=torch.float64)
    for chunk in source.chunks():
        for x in chunk.split(batch_size):
            x = x.to(sae.device)
            f = sae.encode(x)
            x_hat = sae.decode(f).double()
            xd = x.double()
            active = f != 0
            n += x.shape[0]
            sq_err += (xd - x_hat).pow(2).sum().item()
            sum_x += xd.sum(0).cpu()
            sum_sq += xd.pow(2).sum().item()
            l0_sum += active.sum().item()
            fires += active.sum(0).double().cpu()
    if n == 0:
        raise CrosslayerError(
            "there are no evaluation activations (the held-out split is empty)",
            "collect more documents or raise --heldout-frac",
        )
    total_var = sum_sq / n - (sum_x / n).pow(2).sum().item()
    if total_var <= 0:
        raise CrosslayerError(
            f"the {n} evaluation activations have no variance",
            "evaluate on real, non-constant activations",
        )
    ev = 1 - (sq_err / n) / total_var
    freq = (fires / n).numpy()
    log_freq = np.log10(freq[freq > 0])
    counts, edges = np.histogram(log_freq, bins=histogram_bins, range=(-np.log10(n) - 0.5, 0))
    out: dict[str, Any] = {
        "hook": hook,
        "n_tokens": n,
        "explained_variance": ev,
        "fvu": 1 - ev,
        "mse": sq_err / n / source.d,
        "l0": l0_sum / n,
        "dead_fraction": float((freq == 0).mean()),
        "dense_fraction": float((freq > dense_threshold).mean()),
        "dense_threshold": dense_threshold,
        "density_histogram": {
            "log10_frequency_edges": edges.tolist(),
            "counts": counts.tolist(),
            "dead": int((freq == 0).sum()),
        },
    }
    if model is not None:
        if input_ids is None and is_store:
            input_ids, attention_mask = contexts_from_store(data, model, n_contexts)
        if input_ids is None:
            raise CrosslayerError(
                "CE loss recovered needs token contexts",
                "pass input_ids (and attention_mask) or evaluate on a store",
            )
        out.update(ce_loss_recovered(sae, model, input_ids, attention_mask, hook=hook))
    return out


def _ce(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean next-token cross-entropy over positions whose target is a real token."""
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    target = input_ids[:, 1:].to(logits.device)
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    m = mask[:, 1:].to(nll.device).double()
    return float((nll * m).sum() / m.sum())


@torch.no_grad()
def ce_loss_recovered(
    sae: Any,
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    hook: str,
    batch: int = 8,
) -> dict[str, float]:
    """Clean, SAE-spliced and zero-ablated CE; recovered = (zero - sae) / (zero - clean)."""
    check_against_model(sae, model) if sae.cfg.metadata.hook_name == hook else None
    input_ids = torch.as_tensor(input_ids)
    mask = torch.ones_like(input_ids) if attention_mask is None else torch.as_tensor(attention_mask)

    def splice(x: torch.Tensor) -> torch.Tensor:
        return sae.decode(sae.encode(x.to(sae.device))).to(x.dtype).to(x.device)

    fns = {"clean": lambda x: x, "sae": splice, "zero": torch.zeros_like}
    sums = dict.fromkeys(fns, 0.0)
    weight = 0.0
    for i in range(0, input_ids.shape[0], batch):
        ids, m = input_ids[i : i + batch], mask[i : i + batch]
        w = float(m[:, 1:].sum())
        for name, fn in fns.items():
            logits = model.run_with_replacement(ids, m, hook=hook, fn=fn)
            sums[name] += _ce(logits, ids, m) * w
        weight += w
    ce = {k: v / weight for k, v in sums.items()}
    return {
        "ce_clean": ce["clean"],
        "ce_sae": ce["sae"],
        "ce_zero_ablation": ce["zero"],
        "ce_loss_recovered": (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
        "delta_lm_loss": ce["sae"] - ce["clean"],
    }


def contexts_from_store(
    store: Any, model: Any, n_contexts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rebuild held-out token contexts from a store's tokens/positions/context ids.

    Sample positions hold their token; position 0 is BOS; anything else (pad, non-sample
    special tokens) becomes pad with mask 0, so CE is measured on predicting sample tokens.
    """
    split = np.asarray(store.split)
    ctx = np.asarray(store.context_ids)[split == 1]
    pos = np.asarray(store.positions)[split == 1]
    tok = np.asarray(store.tokens)[split == 1]
    chosen = np.unique(ctx)[:n_contexts]
    if chosen.size == 0:
        raise CrosslayerError(
            f"the store {store.path} has no held-out contexts", "collect with heldout_frac > 0"
        )
    length = int(pos.max()) + 1
    tokenizer = model.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((chosen.size, length), pad, dtype=torch.long)
    mask = torch.zeros((chosen.size, length), dtype=torch.long)
    ids[:, 0] = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else pad
    mask[:, 0] = 1
    row = {c: i for i, c in enumerate(chosen.tolist())}
    keep = np.isin(ctx, chosen)
    for c, p, t in zip(ctx[keep].tolist(), pos[keep].tolist(), tok[keep].tolist(), strict=True):
        ids[row[c], p] = t
        mask[row[c], p] = 1
    return ids, mask
