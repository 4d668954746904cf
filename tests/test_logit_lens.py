"""The logit lens: exact at the last block through a non-trivial final norm, SAE read-outs,
the cross-fitted translator on a known affine map, grouped bootstrap shares."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crosslayer.errors import CrosslayerError
from crosslayer.experiments.logit_lens import (
    capture_rows,
    fit_translator,
    grouped_share,
    lens_ranks,
    lens_rows,
    run_logit_lens,
)
from crosslayer.experiments.reps import SaeSite
from crosslayer.model import tiny_model
from tests.test_layers import make_sae

TEXTS = [
    "The cat sat on the mat and looked around the room.",
    "Alan Turing works in the field of logic.",
    "Marie Curie worked in physics all her life.",
    "Darwin studied biology on a long voyage.",
    "The river ran past the old mill at night.",
]


@pytest.fixture(scope="module")
def lm():
    lm = tiny_model("gemma3", n_layers=3, d_model=64, seed=0)
    torch.manual_seed(1)
    with torch.no_grad():  # gain 1 + w far from 1: a lens without the norm would mis-rank
        lm.model.model.norm.weight.copy_(torch.randn_like(lm.model.model.norm.weight) * 3.0)
    return lm


def sequences(lm):
    tok = lm.tokenizer
    return [[tok.bos_token_id, *tok(t, add_special_tokens=False).input_ids] for t in TEXTS]


def model_ranks(lm, seqs):
    """Rank of every next token in the model's own logits, one sequence at a time."""
    out = {}
    for i, s in enumerate(seqs):
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([s])).logits[0].double()
        for t in range(len(s) - 1):
            out[(i, t)] = int((logits[t] > logits[t, s[t + 1]]).sum())
    return out


def test_last_block_lens_is_the_models_own_prediction(lm):
    seqs = sequences(lm)
    answer_pos = [5, 6, 4, 3, 7]
    res = run_logit_lens(lm, seqs, answer_pos, [0, 1, 2, 3, 4], max_next=10_000, n_boot=50)
    rows = lens_rows(seqs, answer_pos, range(5), max_next=10_000)
    ref = model_ranks(lm, seqs)
    want = np.array([ref[(int(i), int(t))] for i, t in zip(rows.seq, rows.pos, strict=True)])
    acts = capture_rows(lm, seqs, rows, [f"blocks.{lm.n_layers - 1}.hook_resid_post"])
    got = lens_ranks(lm, next(iter(acts.values())), rows.target)
    np.testing.assert_array_equal(got, want)  # exactly, rank for rank
    last = res["layers"][-1]
    nxt = rows.kind == "next_token"
    assert last["next_token"]["residual"]["top1"] == pytest.approx(np.mean(want[nxt] == 0))
    assert last["answer"]["residual"]["top10"] == pytest.approx(np.mean(want[~nxt] < 10))
    assert res["n_rows"] == {"next_token": int(nxt.sum()), "answer": 5}
    # without the final norm's gain the ranks differ: the norm is what makes the lens exact
    h = next(iter(acts.values()))
    plain = h / h.pow(2).mean(-1, keepdim=True).sqrt() @ lm.unembed().float()
    plain_rank = (plain > plain.gather(1, torch.as_tensor(rows.target)[:, None])).sum(1)
    assert (plain_rank.numpy() != want).mean() > 0.3


def test_sae_read_out_replaces_the_hook_by_its_reconstruction(lm):
    seqs = sequences(lm)
    hooks = ["blocks.1.hook_resid_post", "blocks.2.hook_mlp_out", "blocks.0.hook_attn_out"]
    sites = {
        1: SaeSite(1, make_sae(hooks[0], d_sae=40), hooks[0], hooks[0]),
        2: SaeSite(2, make_sae(hooks[1], d_sae=40, seed=1), hooks[1], hooks[1]),
        0: SaeSite(0, make_sae(hooks[2], d_sae=40, seed=2), hooks[2], hooks[2]),
    }
    res = run_logit_lens(lm, seqs, [5] * 5, range(5), sites=sites, max_next=10_000, n_boot=20)
    assert res["sae_layers"] == [1, 2] and res["sae_layers_not_readable"] == [0]
    rows = lens_rows(seqs, [5] * 5, range(5), max_next=10_000)
    acts = capture_rows(lm, seqs, rows, [*hooks[:2], "blocks.2.hook_resid_post"])
    with torch.no_grad():  # by hand: resid_post 2 = resid_mid 2 + mlp_out 2
        recon1 = sites[1].sae.decode(sites[1].sae.encode(acts[hooks[0]]))
        mlp = acts[hooks[1]]
        recon2 = (
            acts["blocks.2.hook_resid_post"] - mlp + sites[2].sae.decode(sites[2].sae.encode(mlp))
        )
    nxt = rows.kind == "next_token"
    for layer, h in ((1, recon1), (2, recon2)):
        r = lens_ranks(lm, h, rows.target)
        got = res["layers"][layer]["next_token"]["sae"]
        assert got["top10"] == pytest.approx(np.mean(r[nxt] < 10))
        assert got["median_rank"] == pytest.approx(np.median(r[nxt]))


def test_translator_recovers_a_known_affine_map_out_of_fold():
    rng = np.random.default_rng(0)
    n, d = 1200, 12
    groups = np.repeat(np.arange(60), n // 60)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 5, d)
    a, b = rng.normal(size=(d, d)), rng.normal(size=d) * 10
    y = x @ a + b
    pred, r2 = fit_translator(x, y + 0.01 * rng.normal(size=y.shape), groups)
    np.testing.assert_allclose(pred, y, atol=0.05 * np.abs(y).max())
    assert np.abs(pred - y).mean() < 0.02 and r2 > 0.999
    # a target unrelated to x: out of fold it predicts nothing (R² <= ~0)
    _, r2_null = fit_translator(x, rng.normal(size=(n, 3)), groups)
    assert r2_null < 0.02
    with pytest.raises(CrosslayerError, match="at least 5 fact groups"):
        fit_translator(x, y, groups % 3)


def test_translator_in_the_lens_is_out_of_fold(lm):
    seqs = sequences(lm) * 2
    res = run_logit_lens(lm, seqs, [5] * 10, list(range(10)), translator=True, n_boot=20)
    assert res["translator"]["fitted"]
    assert all("translator" in e["next_token"] for e in res["layers"])
    assert all(np.isfinite(e["translator_r2"]) for e in res["layers"][:-1])
    assert (
        res["layers"][-1]["next_token"]["translator"] == res["layers"][-1]["next_token"]["residual"]
    )


def test_grouped_share_bootstrap_resamples_groups():
    flags = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0], dtype=bool)
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    share, (lo, hi) = grouped_share(flags, groups, n_boot=4000)
    assert share == 0.5
    # resampling whole groups: the share can reach 1 (group 0 thrice) and 0 (group 1 thrice)
    assert lo <= 0.1 and hi >= 0.9
