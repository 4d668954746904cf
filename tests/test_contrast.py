"""Study B experiment 2: items, paired statistics, likelihood baseline, run and CLI."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from crosslayer.cli import main
from crosslayer.errors import CrosslayerError
from crosslayer.experiments.contrast import (
    answer_loglik,
    read_items,
    run_contrast,
    tokenize_pair,
)
from crosslayer.experiments.paired import adds_to_baseline, adjust_pvalues, paired_stats
from crosslayer.model import tiny_model
from tests.test_layers import make_sae


@pytest.fixture(scope="module")
def lm():
    return tiny_model(n_layers=3, d_model=64)


def test_builtin_dataset_has_60_varied_triples():
    items = read_items("builtin")
    assert len(items) >= 60 and len({i.id for i in items}) == len(items)
    kinds = Counter(i.kind for i in items)
    assert set(kinds) == {"deflection", "generality", "topic_change"}
    assert min(kinds.values()) >= 15
    assert all(i.direct != i.evasive and i.question.endswith("?") for i in items)


def test_reads_the_study_layout(shared_data):
    items = read_items(shared_data / "seed_b" / "direct_vs_evasive_10topics.json")
    raw = json.loads((shared_data / "seed_b" / "direct_vs_evasive_10topics.json").read_text())
    assert len(items) == 10
    assert items[0].id == "Cooking Soup"
    assert items[0].direct == raw["Cooking Soup"]["answer_narrow"]
    assert items[0].evasive == raw["Cooking Soup"]["answer_tricked"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"id": "x7", "question": "Q?", "direct": "A."}, "x7 has no 'evasive'"),
        (
            {"id": "x7", "question": "Q?", "direct": " ", "evasive": "B."},
            "x7 has an empty 'direct'",
        ),
        ({"direct": "A.", "evasive": "B."}, "line 3 has no 'question'"),
    ],
)
def test_bad_items_are_named(tmp_path, line, message):
    good = {"question": "Q?", "direct": "A.", "evasive": "B."}
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [good, good, line, good]))
    with pytest.raises(CrosslayerError, match=message):
        read_items(path)
    with pytest.raises(CrosslayerError, match="not found"):
        read_items(tmp_path / "missing.json")


def test_paired_stats_match_scipy_and_sklearn():
    rng = np.random.default_rng(0)
    d = rng.normal(0.3, 1, 40)
    e = rng.normal(0.0, 1, 40)
    s = paired_stats(d, e, n_resamples=999)
    assert s.mean_diff == pytest.approx(np.mean(d - e))
    assert s.p_wilcoxon == pytest.approx(stats.wilcoxon(d - e).pvalue)
    assert s.auroc == pytest.approx(roc_auc_score(np.r_[np.ones(40), np.zeros(40)], np.r_[d, e]))
    assert s.win_rate == pytest.approx(np.mean(d > e))
    assert s.ci_low < s.mean_diff < s.ci_high
    nan_d = d.copy()
    nan_d[0] = np.nan  # a zero SAE code gives a NaN cosine: that pair is dropped
    assert paired_stats(nan_d, e).n == 39


def test_benjamini_hochberg_by_hand():
    p = [0.01, 0.04, 0.03, 0.5]
    # sorted 0.01, 0.03, 0.04, 0.5 -> 0.04, 0.04*4/3... monotone: [0.04, 0.0533, 0.0533, 0.5]
    np.testing.assert_allclose(adjust_pvalues(p), [0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert np.isnan(adjust_pvalues([0.01, float("nan")])[1])


def test_adds_to_baseline_detects_extra_information_only_when_present():
    rng = np.random.default_rng(1)
    base = rng.normal(0.2, 1, 80)
    informative = rng.normal(1.0, 1, 80)  # its own, independent evidence for "direct"
    noise = rng.normal(0.0, 1, 80)
    assert adds_to_baseline(informative, base)["p_adds"] < 0.01
    assert adds_to_baseline(noise, base)["p_adds"] > 0.05


def test_loglik_and_positions_match_full_logits(lm):
    ids, n_q = tokenize_pair(lm, "What is two plus two?", "It is four.")
    q = lm.tokenizer("What is two plus two?", add_special_tokens=False).input_ids
    assert ids[0] == lm.tokenizer.bos_token_id and ids[1:n_q] == q
    logits = lm.model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    ref = np.mean([float(logp[t - 1, ids[t]]) for t in range(n_q, len(ids))])
    assert answer_loglik(lm, ids, n_q) == pytest.approx(ref, abs=1e-6)


def test_run_contrast_cosines_and_outputs(lm, tmp_path):
    items = read_items("builtin")[:6]
    sae = make_sae("blocks.1.hook_mlp_out")
    res = run_contrast(
        lm, items, layers=[0, 1], saes={1: sae}, n_resamples=200, out=tmp_path / "o", progress=False
    )
    # independent: item 0, direct answer, layer 1 residual
    ids, n_q = tokenize_pair(lm, items[0].question, items[0].direct)
    acts = lm.run_with_hooks(
        torch.tensor([ids]), hooks=["blocks.1.hook_resid_post", "blocks.1.hook_mlp_out"]
    )
    r = acts["blocks.1.hook_resid_post"][0].double()
    ref = torch.nn.functional.cosine_similarity(r[n_q - 1], r[n_q:].mean(0), dim=0)
    cos = res.items[0]["cos"]
    assert cos["raw"]["resid"][1]["direct"] == pytest.approx(float(ref), abs=1e-5)
    z = sae.encode(acts["blocks.1.hook_mlp_out"][0]).detach().double()
    ref_sae = torch.nn.functional.cosine_similarity(z[n_q - 1], z[n_q:].mean(0), dim=0)
    assert cos["raw"]["sae"][1]["direct"] == pytest.approx(float(ref_sae), abs=1e-5)
    # centred: minus the mean of the items' own tokens (BOS left out, each token once)
    toks = []
    for it in items:
        for answer in ("direct", "evasive"):
            i2, nq2 = tokenize_pair(lm, it.question, getattr(it, answer))
            x = lm.run_with_hooks(torch.tensor([i2]), hooks=["blocks.1.hook_resid_post"])
            x = x["blocks.1.hook_resid_post"][0].double()
            toks.append(x[1:] if answer == "direct" else x[nq2:])
    mu = torch.cat(toks).mean(0)
    ref_c = torch.nn.functional.cosine_similarity(r[n_q - 1] - mu, r[n_q:].mean(0) - mu, dim=0)
    assert cos["centred"]["resid"][1]["direct"] == pytest.approx(float(ref_c), abs=1e-5)
    assert res.moments["resid"][1]["source"] == "items"
    # mismatched-question control: item 0's direct answer against items 1..5's questions
    qs = []
    for it in items[1:]:
        i2, nq2 = tokenize_pair(lm, it.question, it.direct)
        x = lm.run_with_hooks(torch.tensor([i2]), hooks=["blocks.1.hook_resid_post"])
        qs.append(x["blocks.1.hook_resid_post"][0, nq2 - 1].double() - mu)
    other = np.mean([float(torch.nn.functional.cosine_similarity(qq, r[n_q:].mean(0) - mu, dim=0))
                     for qq in qs])  # fmt: skip
    assert cos["centred"]["resid"][1]["direct_other"] == pytest.approx(other, abs=1e-5)
    assert res.space == "centred" and res.layers is res.layers_by_space["centred"]
    rows = res.layers["resid"]
    c0 = [it["cos"]["centred"]["resid"][0] for it in res.items]
    assert rows[0]["mean_diff"] == pytest.approx(np.mean([c["direct"] - c["evasive"] for c in c0]))
    match = [c["direct"] - c["direct_other"] - c["evasive"] + c["evasive_other"] for c in c0]
    assert rows[0]["match"]["mean_diff"] == pytest.approx(np.mean(match))
    assert rows[0]["space"] == "centred" and "adds_to_pmi" in rows[0]
    assert [r["layer"] for r in res.layers["sae"]] == [1]
    assert all(r["conclusion"] for r in rows)
    assert res.power["min_dz_one_layer"] > res.power["min_dz_every_layer"] > 1  # 6 items
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["likelihood"]["n"] == 6 and "sae" in saved["heatmaps"]
    assert set(saved["layers_by_space"]) == {"centred", "raw", "standardised"}
    assert (tmp_path / "o" / "heatmaps_resid.png").is_file()
    assert (tmp_path / "o" / "contrast_layers.png").is_file()


def test_cli_runs_and_reports_bad_input(lm, tmp_path, shared_data, capsys):
    model_dir = tmp_path / "tiny"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    items = tmp_path / "items.json"
    raw = json.loads((shared_data / "seed_b" / "direct_vs_evasive_10topics.json").read_text())
    items.write_text(json.dumps(dict(list(raw.items())[:4])))
    out = tmp_path / "out"
    rc = main(
        [
            "contrast",
            "--model",
            str(model_dir),
            "--items",
            str(items),
            "--layers",
            "0,2",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr()
    assert "likelihood baseline" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["config"]["layers"] == [0, 2]
    items.write_text(json.dumps({"A": {"question": "Q?", "answer_narrow": "x"}}))
    rc = main(["contrast", "--model", str(model_dir), "--items", str(items), "--out", str(out)])
    assert rc == 2 and "A has no 'evasive'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# spaces, the mismatched-question control, PMI, paired AUROC, power


def _synthetic(rng, n, d, *, q_coef, d_coef, e_coef, share):
    """Items around one dominant direction u = e_0: question q_i = q_coef u + g_i; direct
    answer (d_coef u + share g_i + h_i), evasive (e_coef u + h'_i). ``share`` is the only link
    between an answer and its own question."""
    u = np.zeros(d)
    u[0] = 1.0
    g = rng.normal(size=(n, d))
    q = q_coef * u + g
    direct = d_coef * u + share * g + rng.normal(size=(n, d))
    evasive = e_coef * u + rng.normal(size=(n, d))
    return q, direct, evasive


def _rows(q, direct, evasive, space):
    from crosslayer.experiments.contrast import finish_rows, layer_row, match_scores
    from crosslayer.experiments.spaces import moments_of

    m = moments_of(np.concatenate([q, direct, evasive]))
    qs = m.transform(q, space)
    own, other = {}, {}
    for name, a in (("direct", direct), ("evasive", evasive)):
        own[name], other[name] = match_scores(qs, m.transform(a, space))
    return finish_rows([layer_row(own, other, {}, n_resamples=500)])[0]


def test_centring_removes_an_effect_of_the_dominant_direction():
    # direct answers carry a little more of u than evasive ones, questions sit at the mean:
    # raw cosines favour direct answers, though nothing links an answer to its question
    q, direct, evasive = _synthetic(np.random.default_rng(0), 60, 16, q_coef=10.0,
                                    d_coef=13.0, e_coef=7.0, share=0.0)  # fmt: skip
    raw, centred = _rows(q, direct, evasive, "raw"), _rows(q, direct, evasive, "centred")
    assert raw["mean_diff"] > 0.05 and raw["p_adjusted"] < 1e-6
    # the mismatched-question control sees it: other questions give the same difference
    assert abs(raw["match"]["mean_diff"]) < 0.1 * raw["mean_diff"]
    assert raw["match"]["ci_low"] < 0 < raw["match"]["ci_high"]
    assert "describes the answers, not their match" in raw["conclusion"]
    assert centred["p_adjusted"] > 0.05 and centred["match"]["p_adjusted"] > 0.05
    assert centred["conclusion"].startswith("no reliable difference")


def test_centring_reveals_an_effect_hidden_in_raw():
    # direct answers share their question's own part (a real match) but carry less of u:
    # in raw cosines the two cancel; centred, the match shows
    q, direct, evasive = _synthetic(np.random.default_rng(1), 60, 16, q_coef=10.0,
                                    d_coef=8.0, e_coef=12.0, share=0.6)  # fmt: skip
    raw, centred = _rows(q, direct, evasive, "raw"), _rows(q, direct, evasive, "centred")
    assert raw["p_adjusted"] > 0.5 and abs(raw["mean_diff"]) < 0.01
    # the mismatched-question control finds the match even in raw space (the block 12)
    assert raw["match"]["p_adjusted"] < 1e-6
    assert centred["mean_diff"] > 0.1 and centred["p_adjusted"] < 1e-6
    assert centred["match"]["ci_low"] > 0.1
    assert centred["conclusion"].startswith("direct answers match their own question")


def test_mismatched_control_is_zero_when_answers_ignore_the_question():
    from crosslayer.experiments.contrast import match_scores

    rng = np.random.default_rng(2)
    n, d = 30, 8
    q = np.tile(rng.normal(size=d), (n, 1))  # every item asks "the same" question
    for a in (rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 1.0):
        own, other = match_scores(q, a)
        np.testing.assert_allclose(own, other, atol=1e-12)
    # and the other-question cosine by hand
    q = rng.normal(size=(n, d))
    a = rng.normal(size=(n, d))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    c = unit(q) @ unit(a).T
    own, other = match_scores(q, a)
    np.testing.assert_allclose(own, np.diag(c), atol=1e-12)
    np.testing.assert_allclose(other[3], (c[:, 3].sum() - c[3, 3]) / (n - 1), atol=1e-12)


def test_pmi_and_unconditional_loglik_by_hand(lm):
    items = read_items("builtin")[:3]
    res = run_contrast(lm, items, layers=[0], n_resamples=100, progress=False)
    it, row = items[1], res.items[1]
    tok = lm.tokenizer
    a = tok(" " + it.evasive, add_special_tokens=False).input_ids
    q = tok(it.question, add_special_tokens=False).input_ids

    def mean_logp(prefix: list[int]) -> float:
        ids = [tok.bos_token_id, *prefix, *a]
        logp = torch.log_softmax(lm.model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        start = 1 + len(prefix)
        return float(np.mean([float(logp[t - 1, ids[t]]) for t in range(start, len(ids))]))

    with torch.no_grad():
        cond, uncond = mean_logp(q), mean_logp([])
    assert row["loglik_evasive"] == pytest.approx(cond, abs=1e-6)
    assert row["loglik_unconditional_evasive"] == pytest.approx(uncond, abs=1e-6)
    assert row["pmi_evasive"] == pytest.approx(cond - uncond, abs=1e-6)
    assert row["n_tokens_evasive"] == len(a)
    pmi = [r["pmi_direct"] - r["pmi_evasive"] for r in res.items]
    assert res.baselines["pmi"]["mean_diff"] == pytest.approx(np.mean(pmi))


def test_paired_auroc_against_numpy():
    from crosslayer.experiments.paired import paired_auroc

    rng = np.random.default_rng(3)
    # a large item effect shared by both answers: paired AUROC sees the small within-item
    # shift, the unpaired AUROC drowns it in between-item spread
    item = rng.normal(0, 5, 200)
    d, e = item + rng.normal(1.5, 1, 200), item + rng.normal(0, 1, 200)
    d[:5] = e[:5]  # ties count one half
    ref = np.mean((np.sign(d - e) + 1) / 2)
    assert paired_auroc(d, e) == pytest.approx(ref)
    s = paired_stats(d, e, n_resamples=200)
    assert s.auroc_paired == pytest.approx(ref) and s.auroc_paired > s.auroc + 0.1
    assert s.dz == pytest.approx(np.mean(d - e) / np.std(d - e, ddof=1))


def test_min_detectable_dz_has_the_stated_power():
    from crosslayer.experiments.paired import min_detectable_dz

    n, m = 68, 7
    dz = min_detectable_dz(n, m)
    assert 0.4 < dz < 0.5  # the "about 0.45" for 68 items and 7-18 layers
    rng = np.random.default_rng(4)
    x = rng.normal(dz, 1.0, size=(4000, n))
    p = stats.ttest_1samp(x, 0.0, axis=1).pvalue
    assert np.mean(p < 0.05 / m) == pytest.approx(0.8, abs=0.025)
    assert min_detectable_dz(10, 1) == pytest.approx(0.996, abs=0.01)  # textbook value


def test_adds_to_baseline_with_covariates():
    # a score that is just the length difference adds to a PMI-only baseline, not to
    # PMI + length
    rng = np.random.default_rng(5)
    n = 120
    length = rng.normal(0, 1, n)
    pmi = rng.normal(0.2, 1, n)
    truth = pmi + 2 * length + rng.logistic(size=n) > 0  # which answer is direct
    sign = np.where(truth, 1.0, -1.0)  # flip pairs so that "direct" is always first
    score = sign * (length + 0.1 * rng.normal(size=n))
    base_pmi, base_len = sign * pmi, sign * length
    assert adds_to_baseline(score, base_pmi)["p_adds"] < 0.01
    assert adds_to_baseline(score, np.c_[base_pmi, base_len])["p_adds"] > 0.05
