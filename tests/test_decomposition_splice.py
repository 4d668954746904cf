"""Splicing predictions into a tiny Gemma 3: CE loss recovered is 1 for the layer itself,
about 0 for a mean, and the clean CE equals an independent cross-entropy of the model's logits.

A random tiny model predicts random text no better than its mean-ablated self, so its final
norm is sharpened and the "text" is sampled from the model itself: the clean model then
predicts it well and ablating the layer costs CE, as on a real model and corpus.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from crosslayer.decomposition import splice_contexts, splice_scores
from crosslayer.errors import CrosslayerError
from crosslayer.model import tiny_model

HOOK = "blocks.1.hook_resid_post"
BOS, PAD = 2, 0


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    lm = tiny_model("gemma3", n_layers=3, d_model=32)
    with torch.no_grad():
        lm.model.model.norm.weight += 40.0  # Gemma's gain is 1 + w: sharp next-token odds
    rng = np.random.default_rng(0)
    lengths = list(rng.integers(6, 15, 30))
    torch.manual_seed(0)
    ids = torch.full((30, 1), BOS)
    with torch.inference_mode():
        for _ in range(max(lengths)):
            logits = lm.model(ids).logits[:, -1, 4:]  # no special tokens
            ids = torch.cat([ids, 4 + torch.multinomial(logits.softmax(-1), 1)], 1)
    tokens, positions, ctx = [], [], []
    for c, L in enumerate(lengths):
        tokens.append(ids[c, 1 : L + 1].numpy())
        positions.append(np.arange(1, L + 1))
        ctx.append(np.full(L, c))
    # a context with a gap (a special token inside the text is not a store row): skipped
    tokens.append(rng.integers(4, 500, 5))
    positions.append(np.array([1, 2, 4, 5, 6]))
    ctx.append(np.full(5, len(lengths)))
    tok, pos, cid = (np.concatenate(a) for a in (tokens, positions, ctx))
    sc = splice_contexts(tok, pos, cid, bos_id=BOS, pad_id=PAD, n_contexts=40, seed=0)
    acts = lm.run_with_hooks(torch.as_tensor(sc.input_ids), hooks=[HOOK])[HOOK]
    clean = acts[torch.as_tensor(sc.mask)].float().numpy()
    return dict(lm=lm, sc=sc, tok=tok, clean=clean)


def test_contexts_are_rebuilt_from_store_rows(setup: Any) -> None:
    sc, tok = setup["sc"], setup["tok"]
    assert len(sc.input_ids) == 30  # the context with a gap is left out
    assert (sc.input_ids[:, 0] == BOS).all()
    np.testing.assert_array_equal(sc.input_ids[sc.mask], tok[sc.rows])
    assert sc.mask.sum() == len(sc.rows) == len(tok) - 5


def test_exact_predictor_recovers_all_and_mean_about_none(setup: Any) -> None:
    lm, sc, clean = setup["lm"], setup["sc"], setup["clean"]
    rng = np.random.default_rng(1)
    half = clean.mean(0) + 0.5 * (clean - clean.mean(0))
    preds = {
        "exact": clean,
        # a training-fold mean: 80% of the rows
        "mean": np.broadcast_to(clean[: int(0.8 * len(clean))].mean(0), clean.shape).copy(),
        "half": half,
        "noisy": clean + rng.normal(size=clean.shape).astype(np.float32) * clean.std(),
    }
    got = splice_scores(lm, sc, HOOK, preds, clean.mean(0), batch_size=8)
    assert got["exact"]["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert got["exact"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert abs(got["mean"]["ce_loss_recovered"]) < 0.05
    assert got["mean"]["kl"] == pytest.approx(got["mean_ablation_kl"], rel=0.2)
    assert 0.05 < got["half"]["ce_loss_recovered"] < 0.95
    assert 0 < got["half"]["kl"] < got["mean"]["kl"]
    assert got["mean_ablation_ce"] > got["clean_ce"]
    # the clean CE, written out independently: next-token CE at text positions followed by text
    with torch.inference_mode():
        logits = lm.model(torch.as_tensor(sc.input_ids)).logits.double()
    lp = torch.log_softmax(logits[:, :-1], -1)
    at = torch.as_tensor(sc.mask[:, :-1] & sc.mask[:, 1:])
    target = torch.as_tensor(sc.input_ids[:, 1:])
    ce = -lp.gather(2, target[..., None])[..., 0][at].mean()
    assert got["clean_ce"] == pytest.approx(float(ce), abs=1e-5)
    assert got["n_scored"] == int(at.sum())


def test_misaligned_predictions_are_refused(setup: Any) -> None:
    lm, sc, clean = setup["lm"], setup["sc"], setup["clean"]
    with pytest.raises(CrosslayerError, match="spliced positions"):
        splice_scores(lm, sc, HOOK, {"x": clean[:-1]}, clean.mean(0))


def test_kl_equals_a_float64_reference(setup: Any) -> None:
    """KL(p_clean || p_spliced) of a constant splice, written out independently in float64
    from two full forward passes (hooks on the whole model, not the shared clean prefix)."""
    lm, sc, clean = setup["lm"], setup["sc"], setup["clean"]
    const = clean.mean(0) + 0.5 * clean.std(0)
    got = splice_scores(lm, sc, HOOK, {"c": np.tile(const, (len(clean), 1))}, clean.mean(0))
    ids, mask = torch.as_tensor(sc.input_ids), torch.as_tensor(sc.mask)

    def put(value: torch.Tensor) -> torch.Tensor:
        value = value.clone()
        value[mask] = torch.as_tensor(const, dtype=value.dtype)
        return value

    with torch.inference_mode():
        lp_clean = torch.log_softmax(lm.model(ids).logits.double(), -1)
        lp = torch.log_softmax(lm.run_with_replacement(ids, hook=HOOK, fn=put).double(), -1)
    at = torch.nn.functional.pad(mask[:, :-1] & mask[:, 1:], (0, 1))
    kl = (lp_clean.exp() * (lp_clean - lp)).sum(-1)[at].mean()
    assert float(kl) > 0.1  # the splice matters here
    assert got["c"]["kl"] == pytest.approx(float(kl), rel=1e-5)
    target = torch.nn.functional.pad(ids[:, 1:], (0, 1))
    ce = -lp.gather(2, target[..., None])[..., 0][at].mean()
    assert got["c"]["ce"] == pytest.approx(float(ce), rel=1e-5)
