"""Study B experiment 1: cosine maps, linear CKA, SAE hooks, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

from crosslayer.errors import CrosslayerError
from crosslayer.experiments.layers import run_layers, summary_lines
from crosslayer.experiments.similarity import cka_matrix, cosine_matrix, grouped_cka, linear_cka
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


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / x.std(0)


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
    res = run_layers(lm, [prompt], saes={1: sae}, store=store, n_boot=200, out=tmp_path / "o")

    ids = [lm.tokenizer.bos_token_id, *lm.tokenizer(prompt, add_special_tokens=False).input_ids]
    acts = lm.run_with_hooks(torch.tensor([ids]), hooks=[*hooks[1:], "blocks.1.hook_mlp_out"])
    resid = np.stack([acts[h][0].double().numpy() for h in hooks[1:]])  # [L, T, d]
    t = 3
    v = resid[:, t] / np.linalg.norm(resid[:, t], axis=1, keepdims=True)
    maps = res.prompts_by_space["raw"][0]["resid"]
    np.testing.assert_allclose(maps.layer_by_layer[t], v @ v.T, atol=1e-5)
    r2 = resid[2] / np.linalg.norm(resid[2], axis=1, keepdims=True)
    np.testing.assert_allclose(maps.token_by_token[2], r2 @ r2.T, atol=1e-5)
    # the headline space is centred, on the store's mean of each layer
    assert res.space == "centred" and res.prompts is res.prompts_by_space["centred"]
    mu = store.activations(hooks[3]).to_numpy().astype(np.float64).mean(0)
    c2 = resid[2] - mu
    c2 /= np.linalg.norm(c2, axis=1, keepdims=True)
    np.testing.assert_allclose(res.prompts[0]["resid"].token_by_token[2], c2 @ c2.T, atol=1e-5)
    assert res.moments["resid"][2]["source"] == "store"
    # SAE latents are read at the SAE's own hook (mlp_out), not the residual
    codes = sae.encode(acts["blocks.1.hook_mlp_out"][0]).detach().double().numpy()
    assert res.sae_layers == [1]
    np.testing.assert_allclose(
        res.prompts_by_space["raw"][0]["sae"].token_by_token[0], cosine_matrix(codes), atol=1e-5
    )
    # corpus CKA on the same seeded rows, against the slow formula
    c = res.cka["resid"]
    x0 = store.activations(hooks[1]).to_numpy().astype(np.float64)  # every stored token
    x3 = store.activations(hooks[4]).to_numpy().astype(np.float64)
    assert c["n_tokens"] == len(store.tokens) and c["space"] == "raw"
    assert c["matrix"][0, 3] == pytest.approx(slow_cka(x0, x3), rel=1e-6)
    cs = res.cka["resid_standardised"]
    assert cs["matrix"][0, 3] == pytest.approx(slow_cka(_z(x0), _z(x3)), rel=1e-6)
    assert cs["bootstrap"]["n_contexts"] == len(np.unique(store.context_ids))
    assert np.all(cs["ci_low"] <= cs["matrix"] + 1e-12) and np.all(
        cs["matrix"] <= cs["ci_high"] + 1e-12
    )
    var = x0.var(0)
    assert c["variance"]["top1_variance_share"][0] == pytest.approx(var.max() / var.sum())
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
        res.prompts_by_space["raw"][0]["sae"].token_by_token[0], cosine_matrix(codes), atol=1e-5
    )
    # token-cosine summary: mean over pairs of different tokens, BOS (row 0) left out
    resid = x["blocks.2.hook_resid_post"][0, 1:].double().numpy()
    unit = resid / np.linalg.norm(resid, axis=1, keepdims=True)
    cos = unit @ unit.T
    expect = cos[~np.eye(len(cos), dtype=bool)].mean()
    assert res.token_cosine("raw")["resid"] == [pytest.approx(expect, rel=1e-5)]
    # centred without a store: minus the mean of the prompt's own tokens (BOS left out)
    cen = resid - resid.mean(0)
    cen /= np.linalg.norm(cen, axis=1, keepdims=True)
    expect_c = (cen @ cen.T)[~np.eye(len(cen), dtype=bool)].mean()
    assert res.token_cosine()["resid"] == [pytest.approx(expect_c, rel=1e-5)]
    assert res.moments["resid"][2]["source"] == "items"
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


def _massive(rng: np.random.Generator, n: int = 400, d: int = 12) -> tuple[np.ndarray, ...]:
    """Two layers that share only one massive dimension (sd 40): the rest is unrelated."""
    big = rng.normal(0, 40, n)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    x[:, 0] += big
    y[:, 3] += big
    z = rng.normal(size=(n, d)) + y @ rng.normal(size=(d, d))  # related to y in every dim
    return x, y, z


def test_standardised_cka_against_float64_reference():
    rng = np.random.default_rng(7)
    x, y, z = _massive(rng)
    groups = rng.integers(0, 25, len(x))
    res = grouped_cka([x, y, z], groups, n_boot=50)
    for (i, a), (j, b) in [((0, x), (1, y)), ((0, x), (2, z)), ((1, y), (2, z))]:
        assert res["raw"]["matrix"][i, j] == pytest.approx(slow_cka(a, b), rel=1e-9)
        assert res["standardised"]["matrix"][i, j] == pytest.approx(
            slow_cka(_z(a), _z(b)), rel=1e-9
        )
    # one shared massive dimension makes raw CKA high; standardised sees unrelated layers
    assert res["raw"]["matrix"][0, 1] > 0.9 and res["standardised"]["matrix"][0, 1] < 0.2


def test_cka_bootstrap_replicate_is_the_resampled_cka_and_covers_the_estimate():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(300, 6)) * np.arange(1, 7)  # unequal variances: raw != standardised
    y = 0.5 * x @ rng.normal(size=(6, 6)) + rng.normal(size=(300, 6))
    groups = np.repeat(np.arange(30), 10)  # 30 contexts of 10 tokens
    w = rng.multinomial(30, np.full(30, 1 / 30), size=1)
    rep = grouped_cka([x, y], groups, weights=w)
    # by hand, centred / scaled with the full sample's moments: the feature-form CKA of the
    # resample in which context g appears w_g times, its copies never paired with each other
    xc, yc = x - x.mean(0), y - y.mean(0)

    def resampled_cka(a: np.ndarray, b: np.ndarray) -> float:
        def term(u: np.ndarray, v: np.ndarray) -> float:
            per = [u[groups == g].T @ v[groups == g] for g in range(30)]
            total = sum(k * c for k, c in zip(w[0], per, strict=True))
            own = sum((k * k - k) * float(np.sum(c * c)) for k, c in zip(w[0], per, strict=True))
            return float(np.sum(total * total)) - own

        return term(a, b) / np.sqrt(term(a, a) * term(b, b))

    assert rep["raw"]["boot"][0, 0, 1] == pytest.approx(resampled_cka(xc, yc), rel=1e-9)
    xs, ys = xc / x.std(0), yc / y.std(0)
    assert rep["standardised"]["boot"][0, 0, 1] == pytest.approx(resampled_cka(xs, ys), rel=1e-9)
    # with every count 1 the replicate is the estimate
    one = grouped_cka([x, y], groups, weights=np.ones((1, 30), np.int64))
    assert one["raw"]["boot"][0, 0, 1] == pytest.approx(one["raw"]["matrix"][0, 1], rel=1e-12)
    full = grouped_cka([x, y], groups, n_boot=2000, seed=1)
    for space in ("raw", "standardised"):
        r = full[space]
        assert r["ci_low"][0, 1] < r["matrix"][0, 1] < r["ci_high"][0, 1]
        assert r["ci_high"][0, 1] - r["ci_low"][0, 1] > 0.01  # it does vary
