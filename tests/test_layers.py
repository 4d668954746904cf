"""Study B experiment 1: cosine maps, linear CKA, SAE hooks, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

from crosslayer.errors import CrosslayerError
from crosslayer.experiments.layers import run_layers, summary_lines
from crosslayer.experiments.similarity import cka_matrix, cosine_matrix, linear_cka
from crosslayer.model import tiny_model
from crosslayer.store import collect


def make_sae(hook: str, d_in: int = 64, d_sae: int = 96, seed: int = 0) -> JumpReLUSAE:
    torch.manual_seed(seed)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec):
            p.normal_()
        sae.threshold.fill_(0.1)
    sae.cfg.metadata.hook_name = hook
    return sae


@pytest.fixture(scope="module")
def lm():
    return tiny_model(n_layers=4, d_model=64)


def slow_cka(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC form with an explicit centring matrix, float64 (Kornblith et al. eq. 3)."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float(np.sum(k * l_) / (np.linalg.norm(k) * np.linalg.norm(l_)))


def test_cosine_matrix_matches_numpy_and_zero_rows_are_nan():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 7)), rng.normal(size=(3, 7))
    ref = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (
        b / np.linalg.norm(b, axis=1)[:, None]
    ).T
    np.testing.assert_allclose(cosine_matrix(a, b), ref, atol=1e-12)
    a[2] = 0
    assert np.isnan(cosine_matrix(a)[2]).all()


def test_linear_cka_matches_slow_formula_in_both_forms():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6))
    y = x @ rng.normal(size=(6, 9)) + rng.normal(size=(40, 9))
    wide = rng.normal(size=(40, 70))  # wider than n: Gram form
    assert linear_cka(x, y) == pytest.approx(slow_cka(x, y), rel=1e-10)
    m = cka_matrix([x, y, wide])
    assert m[0, 2] == pytest.approx(slow_cka(x, wide), rel=1e-10)
    assert m[1, 2] == pytest.approx(slow_cka(y, wide), rel=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert linear_cka(x, 3 * x @ q) == pytest.approx(1.0)  # invariant to rotation and scale


def test_run_layers_maps_match_independent_computation(lm, tmp_path):
    sae = make_sae("blocks.1.hook_mlp_out")
    hooks = ["hook_embed"] + [f"blocks.{i}.hook_resid_post" for i in range(4)]
    store = collect(
        lm,
        [*hooks, "blocks.1.hook_mlp_out"],
        corpus="builtin:news",
        n_tokens=1500,
        out=tmp_path / "store",
        context_len=48,
        heldout_frac=0.3,
        progress=False,
    )
    prompt = "The cat sat on the mat."
    res = run_layers(lm, [prompt], saes={1: sae}, store=store, max_tokens=500, out=tmp_path / "o")

    ids = [lm.tokenizer.bos_token_id, *lm.tokenizer(prompt, add_special_tokens=False).input_ids]
    acts = lm.run_with_hooks(torch.tensor([ids]), hooks=[*hooks[1:], "blocks.1.hook_mlp_out"])
    resid = np.stack([acts[h][0].double().numpy() for h in hooks[1:]])  # [L, T, d]
    t = 3
    v = resid[:, t] / np.linalg.norm(resid[:, t], axis=1, keepdims=True)
    maps = res.prompts[0]["resid"]
    np.testing.assert_allclose(maps.layer_by_layer[t], v @ v.T, atol=1e-5)
    r2 = resid[2] / np.linalg.norm(resid[2], axis=1, keepdims=True)
    np.testing.assert_allclose(maps.token_by_token[2], r2 @ r2.T, atol=1e-5)
    # SAE latents are read at the SAE's own hook (mlp_out), not the residual
    codes = sae.encode(acts["blocks.1.hook_mlp_out"][0]).detach().double().numpy()
    assert res.sae_layers == [1]
    np.testing.assert_allclose(
        res.prompts[0]["sae"].token_by_token[0], cosine_matrix(codes), atol=1e-5
    )
    # corpus CKA on the same seeded rows, against the slow formula
    c = res.cka["resid"]
    rows = np.sort(np.random.default_rng(0).choice(len(store.tokens), 500, replace=False))
    x0 = store.activations(hooks[1])[rows].astype(np.float64)
    x3 = store.activations(hooks[4])[rows].astype(np.float64)
    assert c["matrix"][0, 3] == pytest.approx(slow_cka(x0, x3), rel=1e-6)
    assert res.depth is not None and res.depth["target_hooks"] == hooks[1:]
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["versions"]["torch"] and saved["config"]["layers"] == [0, 1, 2, 3]
    assert (tmp_path / "o" / "cka_resid.png").stat().st_size > 1000
    assert (tmp_path / "o" / "prompt0_sae_token_by_token.png").is_file()


def test_study_choice_reads_sae_on_residual_with_a_warning(lm):
    sae = make_sae("blocks.2.hook_mlp_out")
    with pytest.warns(UserWarning, match="out of distribution"):
        res = run_layers(lm, ["Hello there."], layers=[2], saes={2: sae}, sae_on_residual=True)
    ids = [
        lm.tokenizer.bos_token_id,
        *lm.tokenizer("Hello there.", add_special_tokens=False).input_ids,
    ]
    x = lm.run_with_hooks(torch.tensor([ids]), hooks=["blocks.2.hook_resid_post"])
    codes = sae.encode(x["blocks.2.hook_resid_post"][0]).detach().numpy()
    np.testing.assert_allclose(
        res.prompts[0]["sae"].token_by_token[0], cosine_matrix(codes), atol=1e-5
    )
    # token-cosine summary: mean over pairs of different tokens, BOS (row 0) left out
    resid = x["blocks.2.hook_resid_post"][0, 1:].double().numpy()
    unit = resid / np.linalg.norm(resid, axis=1, keepdims=True)
    cos = unit @ unit.T
    expect = cos[~np.eye(len(cos), dtype=bool)].mean()
    assert res.token_cosine()["resid"] == [pytest.approx(expect, rel=1e-5)]
    assert "sae" in res.token_cosine() and any("between different tokens" in line
                                               for line in summary_lines(res))  # fmt: skip


def test_bad_inputs_are_named(lm):
    with pytest.raises(CrosslayerError, match=r"given for layer 3 reads blocks\.1"):
        run_layers(lm, ["Hi."], saes={3: make_sae("blocks.1.hook_mlp_out")})
    with pytest.raises(CrosslayerError, match=r"layers \[7\]"):
        run_layers(lm, ["Hi."], layers=[7])
    with pytest.raises(CrosslayerError, match="prompt is empty"):
        run_layers(lm, ["  "])
    with pytest.raises(CrosslayerError, match="d_in=32"):
        run_layers(lm, ["Hi."], saes={1: make_sae("blocks.1.hook_mlp_out", d_in=32)})
