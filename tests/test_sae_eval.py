"""evaluate_sae: metrics against a float64 numpy reference; CE loss recovered by splicing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crosslayer.errors import CrosslayerError
from crosslayer.sae import evaluate_sae

D, N = 16, 40


def jumprelu(w_enc, w_dec, b_enc, b_dec, thr, hook="blocks.1.hook_resid_post"):
    from sae_lens import SAE

    sae = SAE.from_dict(
        {
            "architecture": "jumprelu",
            "d_in": w_enc.shape[0],
            "d_sae": w_enc.shape[1],
            "apply_b_dec_to_input": False,
            "metadata": {"hook_name": hook},
        }
    )
    with torch.no_grad():
        for name, value in zip(
            ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"),
            (w_enc, w_dec, b_enc, b_dec, thr),
            strict=True,
        ):
            getattr(sae, name).copy_(torch.as_tensor(value, dtype=torch.float32))
    return sae


def test_metrics_match_numpy_reference():
    rng = np.random.default_rng(0)
    p = [
        rng.normal(size=(D, N)),
        rng.normal(size=(N, D)) * 0.3,
        rng.normal(size=N) - 1,
        rng.normal(size=D),
        rng.uniform(0, 1, size=N),
    ]
    p[0][:, :5] = -10 * np.abs(p[0][:, :5])  # some latents that rarely or never fire
    p[2][:5] = -50
    sae = jumprelu(*p)
    x = (rng.normal(size=(3000, D)) * rng.uniform(0.5, 3, size=D) + 2).astype(np.float32)
    m = evaluate_sae(sae, torch.from_numpy(x), batch_size=512)
    xd = x.astype(np.float64)
    pre = xd @ p[0] + p[2]
    f = np.maximum(pre, 0) * (pre > p[4])
    x_hat = f @ p[1] + p[3]
    ev = 1 - ((xd - x_hat) ** 2).sum(1).mean() / ((xd**2).sum(1).mean() - (xd.mean(0) ** 2).sum())
    assert m["explained_variance"] == pytest.approx(ev, rel=1e-4)
    assert m["fvu"] == pytest.approx(1 - ev, rel=1e-4)
    assert m["l0"] == pytest.approx((f > 0).sum(1).mean(), rel=1e-6)
    freq = (f > 0).mean(0)
    assert m["dead_fraction"] == pytest.approx((freq == 0).mean())
    assert m["dead_fraction"] >= 5 / N
    assert m["dense_fraction"] == pytest.approx((freq > 0.1).mean())
    hist = m["density_histogram"]
    assert sum(hist["counts"]) + hist["dead"] == N
    assert m["n_tokens"] == 3000


def test_ce_loss_recovered_perfect_and_zero_sae():
    from crosslayer.model import tiny_model

    model = tiny_model(n_layers=2, d_model=D)
    eye = np.eye(D)
    # relu(x) - relu(-x) = x: a perfect "SAE" with 2D latents and threshold 0
    perfect = jumprelu(
        np.hstack([eye, -eye]),
        np.vstack([eye, -eye]),
        np.zeros(2 * D),
        np.zeros(D),
        np.zeros(2 * D),
    )
    zero = jumprelu(
        np.hstack([eye, -eye]), np.zeros((2 * D, D)), np.zeros(2 * D), np.zeros(D), np.zeros(2 * D)
    )
    ids = torch.randint(4, 500, (4, 24), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    acts = model.run_with_hooks(ids, mask, hooks=["blocks.1.hook_resid_post"])
    x = acts["blocks.1.hook_resid_post"].reshape(-1, D).float()
    m = evaluate_sae(perfect, x, model, input_ids=ids, attention_mask=mask)
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-5)
    assert m["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert m["delta_lm_loss"] == pytest.approx(0.0, abs=1e-4)
    assert m["ce_zero_ablation"] != pytest.approx(m["ce_clean"], abs=1e-3)
    mz = evaluate_sae(zero, x, model, input_ids=ids, attention_mask=mask)
    assert mz["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-4)
    assert mz["ce_sae"] == pytest.approx(m["ce_zero_ablation"], rel=1e-6)


def test_width_mismatch_and_missing_contexts():
    sae = jumprelu(np.zeros((D, N)), np.zeros((N, D)), np.zeros(N), np.zeros(D), np.zeros(N))
    with pytest.raises(CrosslayerError, match="width 8"):
        evaluate_sae(sae, torch.zeros(10, 8))
    from crosslayer.model import tiny_model

    with pytest.raises(CrosslayerError, match="needs token contexts"):
        evaluate_sae(sae, torch.randn(10, D), tiny_model(n_layers=2, d_model=D))


def test_empty_evaluation_set_is_a_clear_error():
    rng = np.random.default_rng(1)
    sae = jumprelu(
        rng.normal(size=(D, N)), rng.normal(size=(N, D)), np.zeros(N), np.zeros(D), np.zeros(N)
    )
    with pytest.raises(CrosslayerError, match="held-out split is empty"):
        evaluate_sae(sae, torch.zeros(0, D))
