"""SparseTopKTrainingSAE: the same training step as sae-lens's dense TopKTrainingSAE.

Reference: sae-lens's own ``TopKTrainingSAE.training_forward_pass`` in float64, on the same
weights and batch: loss terms, every parameter's gradient, and the views the trainer reads.
"""

from __future__ import annotations

import pytest
import torch
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput

from crosslayer.sae import evaluate_sae, train_sae
from crosslayer.sae.sparse_topk import Selection, SparseTopKTrainingSAE

D, M, K = 16, 300, 6


def _pair(rescale: bool) -> tuple[TopKTrainingSAE, SparseTopKTrainingSAE]:
    cfg = TopKTrainingSAEConfig(
        d_in=D, d_sae=M, k=K, dtype="float64", device="cpu", rescale_acts_by_decoder_norm=rescale
    )
    torch.manual_seed(1)
    dense = TopKTrainingSAE(cfg)
    with torch.no_grad():  # non-trivial biases and unequal decoder norms
        dense.b_dec.normal_()
        dense.b_enc.normal_(0, 0.1)
        dense.W_dec.mul_(torch.rand(M, 1, dtype=torch.float64) + 0.5)
    sparse = SparseTopKTrainingSAE(cfg)
    sparse.load_state_dict(dense.state_dict())
    return dense, sparse


@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("n_dead", [0, 4, 250])
def test_sparse_step_equals_sae_lens_dense_step(rescale, n_dead):
    dense, sparse = _pair(rescale)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(48, D, generator=g, dtype=torch.float64) * 3 + 1
    dead = torch.zeros(M, dtype=torch.bool)
    dead[torch.randperm(M, generator=g)[:n_dead]] = True
    outs, grads = [], []
    for sae in (dense, sparse):
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x,
                dead_neuron_mask=dead,
                coefficients={},
                n_training_steps=0,
                is_logging_step=False,
            )
        )
        out.loss.backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters()})
    a, b = outs
    for name in ("mse_loss", "auxiliary_reconstruction_loss"):
        torch.testing.assert_close(b.losses[name], a.losses[name], rtol=1e-12, atol=1e-12)
    assert (float(a.losses["auxiliary_reconstruction_loss"].detach()) > 0) == (n_dead > 0)
    for name, ga in grads[0].items():
        assert ga.abs().max() > 0, name  # every parameter takes gradient here
        torch.testing.assert_close(grads[1][name], ga, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.sae_out, a.sae_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.feature_acts, a.feature_acts, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.hidden_pre, a.hidden_pre, rtol=1e-12, atol=1e-12)
    assert int((b.feature_acts != 0).sum(1).max()) <= K


def test_selection_helpers_equal_dense_products():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(40, M, generator=g, dtype=torch.float64)
    sel = Selection.top(scores, K)
    assert torch.equal(sel.idx, scores.topk(K).indices.sort(1).values)
    w = torch.randn(40, K, generator=g, dtype=torch.float64)
    S = torch.zeros(40, M, dtype=torch.float64).scatter_(1, sel.idx, w)  # the selection matrix
    src = torch.randn(40, D, generator=g, dtype=torch.float64)
    torch.testing.assert_close(sel.per_latent(src, w), S.T @ src)
    b_t = torch.randn(D, M, generator=g, dtype=torch.float64)
    torch.testing.assert_close(sel.sampled(src, b_t), (src @ b_t).gather(1, sel.idx))


def test_train_sae_sparse_and_dense_topk_reach_the_same_sae(tmp_path):
    """Whole training runs (fp32) from one seed: the sparse step follows the dense one to
    float rounding, so the SAEs' held-out reconstructions agree closely."""
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(48, D, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    codes = torch.rand(5120, 48, generator=g) * (torch.rand(5120, 48, generator=g) < 0.08)
    x = codes * 3 @ dirs + 0.3
    cfg = {"arch": "topk", "width": 64, "target_l0": 6, "batch_size": 128, "epochs": 4}
    saes = [
        train_sae(x[:4096], {**cfg, "sparse_topk": s}, tmp_path / str(s), progress=False)
        for s in (True, False)
    ]
    assert type(saes[0]).__name__ == "TopKSAE"  # saved and reopened as sae-lens's own TopK
    held = x[4096:]
    ev = [evaluate_sae(s, held)["explained_variance"] for s in saes]
    assert ev[0] > 0.7
    assert abs(ev[0] - ev[1]) < 1e-3  # 1e-9 measured
    with torch.no_grad():
        rec = [s.decode(s.encode(held)) for s in saes]
    rel = (rec[0] - rec[1]).norm() / (rec[1] - held.mean(0)).norm()
    assert rel < 1e-2  # 1e-7 measured; a flipped top-k choice may add more on other CPUs
