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
    assert res.items[0]["cos_resid"][1][0] == pytest.approx(float(ref), abs=1e-5)
    z = sae.encode(acts["blocks.1.hook_mlp_out"][0]).detach().double()
    ref_sae = torch.nn.functional.cosine_similarity(z[n_q - 1], z[n_q:].mean(0), dim=0)
    assert res.items[0]["cos_sae"][1][0] == pytest.approx(float(ref_sae), abs=1e-5)
    rows = res.layers["resid"]
    diffs = [it["cos_resid"][0][0] - it["cos_resid"][0][1] for it in res.items]
    assert rows[0]["mean_diff"] == pytest.approx(np.mean(diffs))
    assert [r["layer"] for r in res.layers["sae"]] == [1]
    assert all(r["conclusion"] for r in rows)
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["likelihood"]["n"] == 6 and "sae" in saved["heatmaps"]
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
