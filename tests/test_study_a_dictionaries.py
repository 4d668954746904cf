"""Study A's dictionary stages on synthetic data: placebo + seeds trained, scored, compared."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from crosslayer.config import RunConfig
from crosslayer.crossfit import grouped_folds, token_lookup_r2
from crosslayer.experiments.study_a.comparison import (
    BY_CONSTRUCTION,
    compare_saes,
    headline_rows,
    positive_counts,
    score_dictionary,
)
from crosslayer.experiments.study_a.dictionaries import run_dictionaries
from crosslayer.experiments.study_a.inputs import Data, Hooks
from crosslayer.experiments.study_a.run import open_run
from crosslayer.experiments.study_a.saes import (
    dictionary_reads,
    encode_sparse,
    train_dictionaries,
)
from crosslayer.experiments.study_a.transcoders import residuals
from crosslayer.rundir import all_trained_saes
from crosslayer.transcoder import AffineTranscoder

N_DOCS, PER_DOC, VOCAB, D_X, D = 40, 100, 40, 6, 16
SOURCE, TARGET = "hook_embed", "blocks.2.hook_resid_post"


def synthetic() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """tokens, docs, X = emb[token], Y = X A + g(token) + noise (first 30 docs train)."""
    rng = np.random.default_rng(0)
    docs = np.repeat(np.arange(N_DOCS), PER_DOC)
    tokens = rng.integers(0, VOCAB, size=docs.size)
    emb = rng.normal(size=(VOCAB, D_X))
    g = rng.normal(size=(VOCAB, D)) * 0.8
    A = rng.normal(size=(D_X, D)) * 0.25
    X = emb[tokens]
    Y = X @ A + g[tokens] + rng.normal(size=(docs.size, D)) * 0.6
    return tokens, docs, X.astype(np.float32), Y.astype(np.float32)


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> dict[str, Any]:
    tokens, docs, X, Y = synthetic()
    train = docs < 30
    data = Data(X[train], Y[train], X[~train], Y[~train], np.flatnonzero(train),
                np.flatnonzero(~train))  # fmt: skip
    cfg = RunConfig(
        out=str(tmp_path_factory.mktemp("run") / "r"),
        tokens=len(tokens),
        device="cpu",
        transcoder={"study_recipe": True, "adam_epochs": 2, "adam_tokens": 1000},
        sae_training={"width": 32, "target_l0": 4, "epochs": 2, "batch_size": 128, "seeds": 2},
        crossfit={"n_folds": 4, "min_pos_fit": 20, "min_pos_score": 10, "n_bootstrap": 200},
    )
    run = open_run(cfg, progress=False)
    ridge = AffineTranscoder().fit(data.X_train, data.Y_train)
    R = (
        residuals(ridge, data.X_train, data.Y_train),
        residuals(ridge, data.X_heldout, data.Y_heldout),
    )
    store = SimpleNamespace(tokens=tokens, doc_ids=docs)  # what the stage reads of a store
    order = np.concatenate([data.train_idx, data.heldout_idx])
    # no run store here, so the run's fold rule (features.run_folds) is given its result
    folds = grouped_folds(docs[order], 4, cfg.seed)
    D = run_dictionaries(run, Hooks(SOURCE, TARGET), {}, data, R, store, adam=True,
                         fold_ids=folds, max_features=None)  # fmt: skip
    every = {name: np.concatenate(x) for name, x in D.inputs.items()}
    features = {
        name: {"features": {m: [0.5, 0.6, 0.7] for m in ("balanced_accuracy", "auroc", "r2")},
               "study_protocol": None}
        for name in ("baseline", "residual")
    }  # fmt: skip
    cmp = compare_saes(run, features, D.scored, D.saes, D.removals)
    return dict(run=run, dicts=D.saes, scored=D.scored, cmp=cmp, every=every, order=order,
                tokens=tokens, docs=docs, placebo=D.placebo, R=R, data=data,
                inputs={n: x[0] for n, x in D.inputs.items()})  # fmt: skip


def test_every_seed_of_every_dictionary_is_saved_where_sae_lens_opens_it(stage) -> None:
    from sae_lens import SAE

    run = stage["run"]
    names = all_trained_saes(2)
    assert names == ["baseline", "baseline_seed1", "residual", "residual_seed1", "placebo",
                     "placebo_seed1"]  # fmt: skip
    names += ["residual_adam", "residual_adam_seed1"]
    seeds = set()
    for name in names:
        sae = SAE.load_from_disk(run.dirs.sae(name))
        meta = json.loads((run.dirs.sae(name) / "cfg.json").read_text())["metadata"]
        seeds.add((name.split("_seed")[0], meta["seed"]))
        kind = (meta.get("crosslayer_input") or {}).get("kind")
        want = name.split("_seed")[0].removesuffix("_adam")
        assert kind == (None if name.startswith("baseline") else want)
        assert sae.cfg.d_sae == 32
    kinds = ("baseline", "residual", "placebo", "residual_adam")
    assert seeds == {(n, s) for n in kinds for s in (0, 1)}
    # two seeds are two different dictionaries
    w0, w1 = (stage["dicts"]["baseline"][k].W_dec.detach().numpy() for k in (0, 1))
    assert not np.allclose(w0, w1)


def test_a_rerun_reloads_instead_of_training(stage) -> None:
    run, dicts = stage["run"], stage["dicts"]
    again = train_dictionaries(
        run, TARGET, {}, stage["inputs"], reads=dictionary_reads(SOURCE, TARGET)
    )
    for name, saes in dicts.items():
        for a, b in zip(saes, again[name], strict=True):
            np.testing.assert_array_equal(a.W_dec.detach().numpy(), b.W_dec.detach().numpy())


def test_scores_equal_token_lookup_on_the_saes_own_codes(stage) -> None:
    """The reported per-seed score, recomputed from scratch: encode, rule, token lookup."""
    run, cmp = stage["run"], stage["cmp"]["dictionaries"]
    folds = grouped_folds(stage["docs"][stage["order"]], 4, run.cfg.seed)
    for name in ("baseline", "residual", "placebo", "residual_adam"):
        for k, sae in enumerate(stage["dicts"][name]):
            F = encode_sparse(sae, stage["every"][name])
            keep, _ = positive_counts(F, folds, 20, 10)
            assert len(keep) > 3
            ref = token_lookup_r2(stage["tokens"][stage["order"]], F[:, keep].toarray(), folds,
                                  n_permutations=0).r2  # fmt: skip
            assert cmp["scores"][name]["per_seed"][k] == pytest.approx(np.nanmean(ref), abs=1e-9)
            assert cmp["scores"][name]["n_scorable"][k] == len(keep)


def test_a_feature_sample_scores_the_same_features_the_same(stage) -> None:
    run = stage["run"]
    full = stage["scored"]["baseline"][0]
    folds = grouped_folds(stage["docs"][stage["order"]], 4, run.cfg.seed)
    cf = run.cfg.crossfit
    part = score_dictionary(
        stage["dicts"]["baseline"][0], stage["every"]["baseline"], stage["tokens"][stage["order"]],
        stage["docs"][stage["order"]], folds, min_fit=cf.min_pos_fit, min_score=cf.min_pos_score,
        max_features=5, seed=3,
    )  # fmt: skip
    assert len(part.features) == 5 and part.n_scorable == full.n_scorable > 5
    assert set(part.features) <= set(full.features)
    np.testing.assert_allclose(part.r2_by_feature()[part.features],
                               full.r2_by_feature()[part.features], atol=1e-12)  # fmt: skip


def test_comparison_reports_differences_with_both_intervals(stage) -> None:
    cmp = stage["cmp"]
    d = cmp["dictionaries"]
    assert d["by_construction"] == BY_CONSTRUCTION and d["headline"] == "residual - placebo"
    assert list(d["differences"]) == ["residual - placebo", "residual - baseline",
                                      "placebo - baseline", "residual_adam - baseline"]  # fmt: skip
    for key in d["differences"]:
        res = d["differences"][key]
        a, b = res["a"]["per_seed"], res["b"]["per_seed"]
        assert res["difference"] == pytest.approx(np.mean(a) - np.mean(b))
        assert res["seed_level"]["n_seeds"] == 2 and len(res["seed_level"]["ci95"]) == 2
        lo, hi = res["document_bootstrap"]["ci95"]
        assert lo <= hi and res["document_bootstrap"]["n_docs"] == N_DOCS
        assert "e-" not in res["document_bootstrap"]["p_text"]
    # matched pairs and seed stability for every dictionary
    assert set(d["matched"]) == {
        "baseline -> residual", "baseline -> placebo", "baseline -> residual_adam"
    }  # fmt: skip
    assert all(len(rows) == 1 for rows in d["seed_stability"].values())
    assert cmp["balanced_accuracy"]["unit"].startswith("features treated as independent")
    rows = headline_rows(cmp)
    assert rows[0][0].startswith("token-lookup R², residual - placebo (2 seeds, 40 documents)")
    assert f"{d['differences']['residual - placebo']['difference']:+.3f}" in rows[0][1]


def test_removals_say_what_each_input_removed(stage) -> None:
    rem = stage["cmp"]["removals"]
    # the placebo removes the transcoder's share on train, exactly, and no linear signal
    assert rem["placebo"]["removed_share_train"] == pytest.approx(
        rem["residual"]["removed_share_train"], abs=1e-5
    )
    assert abs(rem["placebo"]["removed_part_linear_signal"]["train_ev"]) < 1e-3
    assert abs(rem["residual"]["linear_signal_left"]["train_ev"]) < 1e-3
    # the placebo input keeps the linear signal the residual lost
    assert rem["placebo"]["linear_signal_left"]["heldout_ev"] > 0.1
    # a 2-epoch Adam recipe removes less than the ridge and leaves linear signal behind
    adam = rem["residual_adam"]
    assert adam["removed_share_train"] < rem["residual"]["removed_share_train"]
    assert adam["linear_signal_left"]["heldout_ev"] > 0.05
