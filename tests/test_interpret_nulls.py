"""Latent selection and the nulls of interpret's promotion shares, on synthetic codes with a
known answer; paraphrase strata; PARAREL templates; promoted tokens through the final norm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crosslayer.experiments import selection as sel
from crosslayer.experiments.interpret import paraphrase_cosine
from crosslayer.experiments.latents import PromotedTokens, logit_directions
from crosslayer.experiments.pararel import read_facts, subject, template
from crosslayer.experiments.reps import SaeSite
from crosslayer.model import tiny_model
from tests.test_layers import make_sae


def random_promotions(rng: np.random.Generator, d: int, vocab: int, k: int) -> dict[int, set]:
    return {i: set(rng.choice(vocab, k, replace=False).tolist()) for i in range(d)}


def test_permutation_null_of_a_group_blind_selection_equals_its_observed_share():
    rng = np.random.default_rng(0)
    n_groups, d, vocab = 30, 60, 40
    tops = random_promotions(rng, d, vocab, 3)
    answers = [{int(rng.integers(vocab))} for _ in range(n_groups)]
    # the same latents for every group: hits depend on the answer only, so every
    # permutation of the answers gives exactly the observed share
    blind = np.tile(rng.choice(d, 4, replace=False), (n_groups, 1))
    hits = sel.hit_matrix(blind, answers, tops.__getitem__)
    null = sel.permutation_null(hits, 500, seed=1)
    assert 0 < hits.diagonal().mean() < 1
    np.testing.assert_allclose(null, hits.diagonal().mean(), atol=1e-12)
    # in expectation: codes with no group structure, each group's top-k differs by noise
    diffs = []
    for rep in range(120):
        codes = torch.from_numpy(rng.exponential(size=(n_groups, d)))
        chosen = sel.select_latents(codes, 4, "contrastive").numpy()
        ans = [{int(rng.integers(vocab))} for _ in range(n_groups)]
        h = sel.hit_matrix(chosen, ans, tops.__getitem__)
        diffs.append(h.diagonal().mean() - sel.permutation_null(h, 100, seed=rep).mean())
    diffs = np.array(diffs)
    assert abs(diffs.mean()) < 3 * diffs.std() / np.sqrt(len(diffs))


def test_permutation_null_stays_low_when_latents_are_fact_specific():
    """Group g's latent promotes g's answer: observed 1, the null at chance."""
    n_groups = 25
    tops = {g: {g} for g in range(n_groups)}
    chosen = np.arange(n_groups)[:, None]
    hits = sel.hit_matrix(chosen, [{g} for g in range(n_groups)], tops.__getitem__)
    null = sel.summarise_null(sel.permutation_null(hits, 300), float(hits.diagonal().mean()))
    assert hits.diagonal().all() and null.hi == 0.0 and null.p == pytest.approx(1 / 301)
    perms = sel.derangements(7, 100, seed=3)
    assert not (perms == np.arange(7)).any()
    assert (np.sort(perms, 1) == np.arange(7)).all()


def test_contrastive_selection_picks_the_group_latent_over_the_generic_one():
    rng = np.random.default_rng(0)
    n_groups, d = 12, 40
    means = torch.from_numpy(rng.uniform(0, 0.05, (n_groups, d)))
    means[:, 0] += 5.0  # generic: strong in every group
    for g in range(n_groups):
        means[g, g + 1] += 1.0  # planted, weaker, only in group g
    raw = sel.select_latents(means, 1, "top")[:, 0]
    con = sel.select_latents(means, 1, "contrastive")[:, 0]
    assert (raw == 0).all()
    assert con.tolist() == list(range(1, n_groups + 1))
    ref = means.numpy() - (means.numpy().sum(0) - means.numpy()) / (n_groups - 1)
    np.testing.assert_allclose(sel.contrastive_scores(means).numpy(), ref, rtol=1e-12)
    assert sel.generic_latents(sel.select_latents(means, 2, "top").numpy()) == [
        {"latent": 0, "n_groups": n_groups}
    ]
    assert sel.generic_latents(sel.select_latents(means, 1, "contrastive").numpy()) == []


def test_density_matched_draws_match_density_and_never_draw_dead_latents():
    rng = np.random.default_rng(0)
    d = 2000
    density = 10 ** rng.uniform(-4, -1, d)
    density[rng.choice(d, 300, replace=False)] = 0.0  # dead on these prompts
    norm = np.ones(d)
    alive = np.flatnonzero(density > 0)
    chosen = rng.choice(alive, (10, 5))
    cands = sel.matched_candidates(chosen, density, norm, neighbours=5)
    draws = sel.matched_draws(chosen, cands, 400, seed=0)
    ratio = density[draws] / density[chosen][None]
    assert np.abs(np.log(ratio)).max() < np.log(1.05)  # 1,700 latents over 3 decades
    assert (density[draws] > 0).all()
    assert not (draws == chosen[None]).any()
    # the null share against a slow loop over draws
    tops = random_promotions(rng, d, 50, 4)
    answers = [{int(rng.integers(50))} for _ in range(10)]
    fast = sel.matched_null(draws, answers, tops.__getitem__)
    slow = [np.mean([any(tops[int(i)] & answers[g] for i in draws[r, g]) for g in range(10)])
            for r in range(len(draws))]  # fmt: skip
    np.testing.assert_allclose(fast, slow)


def test_density_matching_uses_the_norm_too():
    density = np.full(6, 0.1)
    norm = np.array([1.0, 1.01, 5.0, 5.1, 20.0, 1.02])
    cands = sel.matched_candidates(np.array([[0], [2]]), density, norm, neighbours=2)
    assert sorted(cands[0].tolist()) == [1, 5] and sorted(cands[2].tolist())[0] == 3


def test_paraphrase_cosine_strata():
    group = np.array([0, 0, 1, 1, 2])
    tmpl = np.array([0, 1, 0, 1, 0])
    tok = np.array([7, 7, 7, 8, 8])
    cos = np.zeros((5, 5))
    for i in range(5):
        for j in range(5):  # a known value per stratum
            cos[i, j] = (1.0 if group[i] == group[j] else 0.5 * (tmpl[i] == tmpl[j])
                         + 0.25 * (tok[i] == tok[j]))  # fmt: skip
    out = paraphrase_cosine(cos, group, tmpl, tok)
    assert out["same_fact"] == {"mean": 1.0, "n_pairs": 2}
    assert out["other_fact_same_template_same_answer"] == {"mean": 0.75, "n_pairs": 1}
    assert out["other_fact_same_template_other_answer"]["mean"] == 0.5
    assert out["other_fact_other_template_same_answer"]["mean"] == 0.25
    assert out["other_fact_other_template_other_answer"]["mean"] == 0.0
    assert sum(v["n_pairs"] for v in out.values()) == 10


def test_pararel_subjects_and_templates(shared_data):
    groups = read_facts(shared_data / "pararel" / "data_nm.json", relation="P101", n_groups=20)
    assert subject(groups[0]) == "Alan Turing"
    names = {template(f, subject(g)) for g in groups for f in g}
    assert "[X] works in the field of [MASK]." in names and len(names) == 13


def test_promoted_tokens_equal_the_models_logit_change_through_a_nontrivial_final_norm():
    """A latent's decoder row, added (small, RMS kept) to the last residual, changes the
    model's logits by its promoted-token weights; W_dec @ W_U without the gain does not."""
    lm = tiny_model("gemma3", seed=0)
    norm = lm.model.model.norm
    torch.manual_seed(0)
    with torch.no_grad():
        norm.weight.copy_(torch.randn_like(norm.weight) * 3.0)
    hook = f"blocks.{lm.n_layers - 1}.hook_resid_post"
    site = SaeSite(lm.n_layers - 1, make_sae(hook, d_in=lm.d_model, d_sae=16), hook, hook)
    cache = PromotedTokens(site, lm, k=5, chunk=3)
    for i in (0, 7, 15):
        w = site.sae.W_dec[i].detach().float()
        x = torch.randn(lm.d_model)
        x = x - (x @ w) * w / (w @ w)  # x ⟂ W_dec[i]: adding it keeps the RMS to first order
        x = x / x.pow(2).mean().sqrt()  # unit RMS, so the norm's scale is 1 at x
        eps = 1e-3 / w.norm()
        with torch.no_grad():
            delta = (lm.model.lm_head(norm(x + eps * w)) - lm.model.lm_head(norm(x))) / eps
        rows = logit_directions(site, lm, [i])[0]
        torch.testing.assert_close(delta.double(), rows.double(), rtol=3e-2, atol=2e-3)
        assert not torch.allclose(delta, w @ lm.unembed().float(), rtol=0.2, atol=1e-3)
        ids, vals = cache.top(i)
        assert ids == rows.topk(5).indices.tolist()
        np.testing.assert_allclose(vals, rows.topk(5).values.numpy(), rtol=1e-5)
