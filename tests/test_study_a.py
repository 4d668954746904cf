"""Study A end to end on a tiny Gemma 3 (and a tiny Gemma 2 through the CLI).

One run of the whole study is shared by most tests (module fixture, ~30-60 s on 2 cores);
each test recomputes a number of ``results.json`` independently from the run's store and
SAEs and asserts it equals what the study reported.
"""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats

from crosslayer.config import RunConfig, build_config
from crosslayer.errors import ConfigMismatchError, CrosslayerError
from crosslayer.experiments import study_a
from crosslayer.experiments.study_a import run_study_a
from crosslayer.model import tiny_model
from crosslayer.sae import load_sae
from crosslayer.store import open_store

SOURCE, TARGET = "hook_embed", "blocks.2.hook_resid_post"

# Small everywhere, but every stage on: both baselines of the transcoder, the sweep, the
# study's probe protocol.
TINY: dict[str, Any] = {
    "corpus": "builtin:news",
    "tokens": 4000,
    "data": {"max_doc_chars": 1500, "heldout_frac": 0.25, "min_split_tokens": 200},
    "sweep": {"tokens": 2500},
    "transcoder": {"study_recipe": True, "adam_epochs": 2, "mlp_hidden": 32, "mlp_max_epochs": 2},
    "sae_training": {"arch": "topk", "width": 64, "target_l0": 6, "epochs": 2, "batch_size": 256},
    "crossfit": {"min_pos_fit": 10, "min_pos_score": 5},
    "probes": {"study_features": 4, "study_tokens": 2000},
    "analysis": {"n_bootstrap": 500, "n_extreme": 2, "top_k": 3},
}


def tiny_config(out: Path, **overrides: Any) -> RunConfig:
    return build_config("quick", overrides={**TINY, "out": str(out), **overrides})


@pytest.fixture(scope="module")
def lm() -> Any:
    return tiny_model("gemma3", n_layers=4, d_model=64)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, lm: Any) -> tuple[RunConfig, dict[str, Any]]:
    cfg = tiny_config(tmp_path_factory.mktemp("study") / "run")
    return cfg, run_study_a(cfg, model=lm, progress=False)


def _arrays(out: Path) -> dict[str, np.ndarray]:
    store = open_store(out / "store")
    X, Y = store.activations(SOURCE), store.activations(TARGET)
    return {
        "Xtr": X.to_numpy("train").astype(np.float64),
        "Ytr": Y.to_numpy("train").astype(np.float64),
        "Xh": X.to_numpy("heldout").astype(np.float64),
        "Yh": Y.to_numpy("heldout").astype(np.float64),
        "tokens": np.concatenate([store.tokens[store.split == 0], store.tokens[store.split == 1]]),
    }


def _saved_transcoder(out: Path) -> dict[str, np.ndarray]:
    """The ridge map of ``RUN/transcoder/``, read with safetensors alone (not our loader)."""
    from safetensors.numpy import load_file

    cfg = json.loads((out / "transcoder" / "cfg.json").read_text())
    assert (cfg["source_hook"], cfg["target_hook"]) == (SOURCE, TARGET)
    w = load_file(str(out / "transcoder" / "model.safetensors"))
    return {"coef": w["W"], "intercept": w["b"]}


def _ev(y: np.ndarray, pred: np.ndarray) -> float:
    """Explained variance around per-dimension means, written out independently."""
    return float(1 - ((y - pred) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def _ridge(X: np.ndarray, Y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ridge on centred data, penalty alpha * trace(Cxx) / d (the documented form)."""
    mx, my = X.mean(0), Y.mean(0)
    cxx = (X - mx).T @ (X - mx) / len(X)
    cxy = (X - mx).T @ (Y - my) / len(X)
    B = np.linalg.solve(cxx + alpha * np.trace(cxx) / X.shape[1] * np.eye(X.shape[1]), cxy)
    return B.T, my - mx @ B


# --------------------------------------------------------------------------------------------
# the transcoder and the residuals


def test_transcoder_is_fit_on_train_split_only_and_scored_on_heldout(study: Any) -> None:
    cfg, res = study
    a = _arrays(Path(cfg.out))
    ridge = res["transcoder"]["ridge"]
    assert ridge["alpha_criterion"] == "gcv"  # held-out tokens play no part in fitting
    saved = _saved_transcoder(Path(cfg.out))
    coef, intercept = _ridge(a["Xtr"], a["Ytr"], ridge["alpha"])
    np.testing.assert_allclose(saved["coef"], coef, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(saved["intercept"], intercept, rtol=1e-4, atol=1e-5)
    # ... and NOT the fit that also saw the held-out tokens
    both, _ = _ridge(np.vstack([a["Xtr"], a["Xh"]]), np.vstack([a["Ytr"], a["Yh"]]), ridge["alpha"])
    assert np.abs(saved["coef"] - both).max() > 1e-3

    pred_h = a["Xh"] @ saved["coef"].T + saved["intercept"]
    assert ridge["heldout"]["explained_variance"] == pytest.approx(_ev(a["Yh"], pred_h), abs=1e-5)
    per_dim = 1 - ((a["Yh"] - pred_h) ** 2).sum(0) / ((a["Yh"] - a["Yh"].mean(0)) ** 2).sum(0)
    np.testing.assert_allclose(ridge["heldout"]["r2_per_dim"], per_dim, atol=1e-5)
    pred_t = a["Xtr"] @ saved["coef"].T + saved["intercept"]
    global_mean = 1 - ((a["Ytr"] - pred_t) ** 2).sum() / ((a["Ytr"] - a["Ytr"].mean()) ** 2).sum()
    assert ridge["train"]["r2_global_mean"] == pytest.approx(global_mean, abs=1e-5)
    # the study's recipe and the MLP are scored on the same held-out tokens
    assert res["transcoder"]["study_recipe"]["heldout"]["n_tokens"] == len(a["Yh"])
    assert res["transcoder"]["mlp"]["heldout"]["n_tokens"] == len(a["Yh"])


def test_residual_is_late_minus_transcoder_and_feeds_the_residual_sae(study: Any) -> None:
    cfg, res = study
    out = Path(cfg.out)
    a = _arrays(out)
    saved = _saved_transcoder(out)
    from crosslayer.transcoder import AffineTranscoder

    tc = AffineTranscoder()
    tc.coef_, tc.intercept_, tc.n_features_in_ = saved["coef"], saved["intercept"], 64
    r = study_a.residuals(tc, a["Xh"].astype(np.float32), a["Yh"].astype(np.float32))
    expected = a["Yh"] - (a["Xh"] @ saved["coef"].T + saved["intercept"])
    np.testing.assert_allclose(r, expected, atol=1e-4)

    # the residual SAE's reported held-out EV is its EV on exactly these residuals
    sae = load_sae(out / "saes" / "residual")
    with torch.no_grad():
        x = torch.from_numpy(r)
        recon = sae.decode(sae.encode(x)).double().numpy()
    assert res["saes"]["residual"]["heldout"]["explained_variance"] == pytest.approx(
        _ev(r.astype(np.float64), recon), abs=1e-4
    )


def test_baseline_and_residual_saes_are_trained_identically(study: Any) -> None:
    cfg, res = study
    runs = {
        n: json.loads((Path(cfg.out) / "saes" / n / "training.json").read_text())
        for n in ("baseline", "residual")
    }
    assert runs["baseline"]["config"] == runs["residual"]["config"]
    assert runs["baseline"]["config"]["width"] == 64
    assert runs["baseline"]["config"]["target_l0"] == 6
    assert runs["baseline"]["tokens"] == runs["residual"]["tokens"] > 0
    n_train = res["data"]["n_train"]
    for n in ("baseline", "residual"):
        assert runs[n]["data"]["n"] == n_train  # the train split, nothing else
        assert res["saes"][n]["width"] == 64
        assert res["saes"][n]["heldout"]["l0"] == pytest.approx(6, abs=1e-6)  # TopK: exact


# --------------------------------------------------------------------------------------------
# per-feature probes and the comparison


def test_features_are_cross_fitted_by_document_and_recomputed(study: Any) -> None:
    """The per-feature table, recomputed from the store and the saved SAE: alive decided on
    training folds, the minimum-positives rule, folds by document over every token, and the
    ridge and token-lookup scores of one feature refitted on those folds."""
    import pandas as pd

    from crosslayer.crossfit import CrossFitRidge, grouped_folds, token_lookup_r2

    cfg, res = study
    out = Path(cfg.out)
    a = _arrays(out)
    store = open_store(out / "store")
    rows = np.concatenate([np.flatnonzero(store.split == 0), np.flatnonzero(store.split == 1)])
    folds = grouped_folds(store.doc_ids, cfg.crossfit.n_folds, cfg.seed)[rows]
    docs = store.doc_ids[rows]
    assert all(len(np.unique(folds[docs == d])) == 1 for d in np.unique(docs))  # whole documents
    sae = load_sae(out / "saes" / "baseline")
    with torch.no_grad():
        f = sae.encode(torch.from_numpy(np.concatenate([a["Ytr"], a["Yh"]]).astype(np.float32)))
    f = f.numpy().astype(np.float64)
    K = cfg.crossfit.n_folds
    pos = np.stack([(f[folds == k] > 0).sum(0) for k in range(K)])  # [K, d_sae]
    pos_train = pos.sum(0) - pos
    alive = np.flatnonzero((pos_train > 0).all(0))
    n_neg_train = np.bincount(folds, minlength=K)[:, None].sum() - np.bincount(folds)[:, None]
    fit_ok = (pos_train >= 10).all(0) & ((n_neg_train - pos_train) >= 10).all(0)
    score_ok = (pos.sum(0) >= 5) & (len(f) - pos.sum(0) >= 5)
    feats = res["features"]["baseline"]
    assert feats["n_alive"] == len(alive) > 0 and feats["n_tokens"] == len(f)
    assert feats["features"]["feature"] == alive.tolist()
    np.testing.assert_allclose(feats["features"]["density"], pos.sum(0)[alive] / len(f))
    assert feats["features"]["scorable"] == (fit_ok & score_ok)[alive].tolist()
    assert feats["n_scorable"] == int((fit_ok & score_ok)[alive].sum()) > 0
    assert sum(feats["excluded"].values()) == f.shape[1] - feats["n_scorable"]

    # the table on disk is the same numbers, with a CSV copy beside it
    table = pd.read_parquet(out / feats["table"])
    assert table["feature"].tolist() == alive.tolist()
    np.testing.assert_allclose(table["r2"], np.array(feats["features"]["r2"], float))
    assert (out / feats["table"]).with_suffix(".csv").is_file()
    scored = table[table["scorable"]]
    assert scored["r2"].notna().all() and scored["balanced_accuracy"].notna().all()
    assert table.loc[~table["scorable"], "r2"].isna().all()  # excluded: not scored

    # one scorable feature refitted on the same folds from the source activations
    j = int(scored["feature"].iloc[len(scored) // 2])
    X = np.concatenate([a["Xtr"], a["Xh"]]).astype(np.float32)
    ridge = CrossFitRidge().fit(X, f[:, [j]].astype(np.float32), folds)
    row = table.index[table["feature"] == j][0]
    assert table.loc[row, "r2"] == pytest.approx(ridge.r2_[0], abs=1e-6)
    tl = token_lookup_r2(a["tokens"], f[:, [j]], folds, seed=cfg.seed)
    assert table.loc[row, "token_r2"] == pytest.approx(tl.r2[0], abs=1e-9)
    assert 0.0 <= table.loc[row, "auroc"] <= 1.0


def test_comparison_matches_the_per_feature_numbers(study: Any) -> None:
    _, res = study
    base = np.array(res["features"]["baseline"]["features"]["balanced_accuracy"], dtype=float)
    resid = np.array(res["features"]["residual"]["features"]["balanced_accuracy"], dtype=float)
    base, resid = base[np.isfinite(base)], resid[np.isfinite(resid)]
    cmp = res["comparison"]["balanced_accuracy"]
    assert cmp["baseline"]["n"] == len(base) and cmp["residual"]["n"] == len(resid)
    assert cmp["baseline"]["mean"] == pytest.approx(base.mean())
    assert cmp["residual"]["median"] == pytest.approx(np.median(resid))
    assert cmp["diff_mean"] == pytest.approx(base.mean() - resid.mean())
    lo, hi = cmp["diff_mean_ci95"]
    assert lo < cmp["diff_mean"] < hi
    p = stats.mannwhitneyu(base, resid, alternative="two-sided").pvalue
    assert cmp["mannwhitney_p"] == pytest.approx(p)
    # the study's protocol ran beside ours, on a sample of the same alive features
    sp = res["features"]["baseline"]["study_protocol"]
    assert len(sp["index"]) == 4
    assert set(sp["index"]) <= set(res["features"]["baseline"]["features"]["index"])
    assert all(0.0 <= x <= 1.0 for x in sp["accuracy"] if x is not None)


def test_extremes_show_marked_contexts_of_the_ranked_features(study: Any) -> None:
    _, res = study
    feats = res["features"]["baseline"]
    values = {
        i: v
        for i, v in zip(
            feats["features"]["index"], feats["features"]["balanced_accuracy"], strict=True
        )
        if v is not None
    }
    most, least = feats["extremes"]["most"], feats["extremes"]["least"]
    assert most[0]["balanced_accuracy"] == pytest.approx(max(values.values()))
    assert least[0]["balanced_accuracy"] == pytest.approx(min(values.values()))
    for item in most + least:
        assert 1 <= len(item["contexts"]) <= 3
        acts = [c["activation"] for c in item["contexts"]]
        assert acts == sorted(acts, reverse=True) and acts[0] > 0
        assert all(c["text"].endswith(f"«{c['token']}»") for c in item["contexts"])


# --------------------------------------------------------------------------------------------
# outputs, depth sweep, resume


def test_results_file_plots_and_provenance(study: Any) -> None:
    cfg, _ = study
    out = Path(cfg.out)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["schema"] == "crosslayer.study_a" and on_disk["schema_version"] == 3
    # no absolute paths: the config without `out`, files relative to the run directory
    assert on_disk["config"] == cfg.model_dump(mode="json", exclude={"out"})
    assert "out" not in on_disk and str(out) not in (out / "results.json").read_text()
    assert (on_disk["data"]["store"], on_disk["data"]["sweep_store"]) == ("store", "sweep_store")
    assert {n: s["path"] for n, s in on_disk["saes"].items()} == {
        "baseline": "saes/baseline",
        "residual": "saes/residual",
    }
    assert on_disk["config_hash"] == cfg.hash()
    assert on_disk["versions"]["torch"] == metadata.version("torch")
    assert on_disk["versions"]["sae-lens"] == metadata.version("sae-lens")
    assert on_disk["hooks"] == {"source": SOURCE, "target": TARGET}
    assert on_disk["study_reference"]["transcoder_r2"] == 0.5025
    assert on_disk["data"]["n_train"] + on_disk["data"]["n_heldout"] == 4000
    assert sorted(on_disk["plots"]) == [
        "depth_curve.png",
        "feature_predictability.png",
        "study_a.png",
        "variance_split.png",
    ]
    for name in on_disk["plots"]:
        blob = (out / name).read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 10_000


def test_run_ends_with_a_self_contained_report(study: Any) -> None:
    cfg, results = study
    html = (Path(cfg.out) / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') >= len(results["plots"])
    assert TARGET in html and "http://" not in html.replace("http://www.w3.org", "")
    # the MLP is one more function of the embedding, below E[late | token]: not a ceiling
    row = html.split('data-key="transcoder.mlp.heldout.explained_variance">')[1].split("</tr>")[0]
    assert "not a ceiling" in row and "E[late | token]" in row
    assert "nonlinear ceiling" not in html


def test_depth_sweep_covers_every_resid_post_up_to_the_target(study: Any) -> None:
    cfg, res = study
    d = res["depth_sweep"]
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(3)]
    assert d["target_hooks"] == hooks
    sweep = open_store(Path(cfg.out) / "sweep_store")
    # whole documents of the main store, about sweep.tokens (one pass fills both stores)
    main = open_store(Path(cfg.out) / "store")
    rows = np.isin(main.doc_ids, np.unique(sweep.doc_ids))
    assert 1000 < sweep.n_tokens == rows.sum() <= 2500 + 1000
    np.testing.assert_array_equal(sweep.tokens, main.tokens[rows])
    np.testing.assert_array_equal(sweep.activations(TARGET)[:], main.activations(TARGET)[rows])
    # every point is the decomposition's out-of-fold linear EV; the last one is the headline's
    dec = res["decomposition"]
    assert d["explained_variance"] == [dec[h]["linear"]["ev"] for h in hooks]
    assert d["store"] == ["sweep_store", "sweep_store", "store"]
    assert d["n_tokens"][:2] == [sweep.n_tokens] * 2 and d["n_tokens"][2] == res["data"]["n_tokens"]
    # the former fit (alpha chosen on the held-out tokens it scores), labelled and kept
    old = d["holdout_chosen"]
    assert (sweep.split == 1).sum() == old["n_heldout"] > 0
    X, Y = sweep.activations(SOURCE), sweep.activations(TARGET)
    xtr, ytr = X.to_numpy("train").astype(float), Y.to_numpy("train").astype(float)
    xh, yh = X.to_numpy("heldout").astype(float), Y.to_numpy("heldout").astype(float)
    coef, icpt = _ridge(xtr, ytr, old["alpha"][-1])
    assert old["heldout_explained_variance"][-1] == pytest.approx(
        _ev(yh, xh @ coef.T + icpt), abs=1e-4
    )


def test_decomposition_of_the_target_matches_sklearn_and_splices(study: Any) -> None:
    from crosslayer.crossfit import DEFAULT_ALPHAS, grouped_folds

    cfg, res = study
    dec = res["decomposition"]
    t = dec[TARGET]
    names = ["mean", "linear", "token", *[f"context_{k}" for k in range(1, 5)]]
    for p in names:
        assert set(t[p]) >= {"ev", "ev_standardised", "ci95", "ev_standardised_ci95"}
        assert {"ce_loss_recovered", "kl"} <= set(t[p])
    # every document-bootstrap CI of every layer holds its own estimate (resamples re-centred
    # on their own mean once put the mean predictor's EV -0.0204 outside [-0.0507, -0.0192])
    for hook, layer in dec.items():
        if hook in ("definitions", "settings"):
            continue
        for p in [q for q in [*names, "rest"] if q in layer]:
            for key, ci in (("ev", "ci95"), ("ev_standardised", "ev_standardised_ci95")):
                lo, hi = layer[p][ci]
                assert lo <= layer[p][key] <= hi, (hook, p, key, lo, layer[p][key], hi)
    assert 0 < t["top_dim_share"] < 1 and "definitions" in dec
    assert t["rest"]["ev"] == pytest.approx(1 - max(t[p]["ev"] for p in names[1:]))
    assert abs(t["mean"]["ce_loss_recovered"]) < 0.1  # the training mean is a mean ablation
    assert t["token"]["ev"] >= t["linear"]["ev"] - 0.01
    # linear, recomputed in float64 numpy (scikit-learn's Ridge(alpha * n) on StandardScaler-ed
    # X, written out): all store rows, the run's folds, alpha by nested CV on the summed error
    store = open_store(Path(cfg.out) / "store")
    X = store.activations(SOURCE).to_numpy().astype(np.float64)
    Y = store.activations(TARGET).to_numpy().astype(np.float64)
    folds = grouped_folds(store.doc_ids, cfg.crossfit.n_folds, cfg.seed)
    K, pred = folds.max() + 1, np.empty_like(Y)

    def fit(tr: np.ndarray, te: np.ndarray, a: float) -> np.ndarray:
        mx, sx, my = X[tr].mean(0), X[tr].std(0), Y[tr].mean(0)
        sx[sx == 0] = 1.0
        xs = (X[tr] - mx) / sx
        w = np.linalg.solve(xs.T @ xs + a * tr.sum() * np.eye(X.shape[1]), xs.T @ (Y[tr] - my))
        return np.asarray((X[te] - mx) / sx @ w + my)

    for k in range(K):
        T = folds != k
        path = [
            sum(
                ((Y[folds == i] - fit(T & (folds != i), folds == i, a)) ** 2).sum()
                for i in range(K)
                if i != k
            )
            for a in DEFAULT_ALPHAS
        ]
        pred[folds == k] = fit(T, folds == k, DEFAULT_ALPHAS[int(np.argmin(path))])
    assert t["linear"]["ev"] == pytest.approx(_ev(Y, pred), abs=1e-4)


def test_rerun_resumes_and_another_config_is_refused(study: Any, lm: Any) -> None:
    cfg, res = study
    stages, tc_dir = Path(cfg.out) / "stages", Path(cfg.out) / "transcoder"

    def stamps() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for d in (stages, tc_dir) for p in d.iterdir()}

    before = stamps()
    again = run_study_a(cfg, model=lm, progress=False)
    assert stamps() == before  # the transcoder artefact is the stage's cache: reused
    assert again["comparison"] == res["comparison"]
    assert again["transcoder"] == res["transcoder"]
    # a run directory from before transcoder/ existed (weights in stages/transcoder.npz)
    # refits the stage and gets the same map back
    saved = _saved_transcoder(Path(cfg.out))
    shutil.rmtree(tc_dir)
    np.savez(stages / "transcoder.npz", coef=saved["coef"], intercept=saved["intercept"])
    assert run_study_a(cfg, model=lm, progress=False)["transcoder"] == res["transcoder"]
    refit = _saved_transcoder(Path(cfg.out))
    np.testing.assert_array_equal(refit["coef"], saved["coef"])
    (stages / "transcoder.npz").unlink()
    with pytest.raises(ConfigMismatchError, match="differs in: tokens"):
        run_study_a(tiny_config(Path(cfg.out), tokens=5000), model=lm, progress=False)


def test_the_comparison_scores_on_the_runs_one_fold_rule(study: Any) -> None:
    """score_dictionaries takes its folds from features.run_folds; over the train and
    held-out rows (every row of the store) these are the folds it made before by grouping
    those rows' documents itself (grouped_folds depends on documents and sizes, not order)."""
    from crosslayer.crossfit import grouped_folds
    from crosslayer.experiments.study_a.features import run_folds
    from crosslayer.experiments.study_a.run import open_run

    cfg, _ = study
    store = open_store(Path(cfg.out) / "store")
    rows = np.concatenate([np.flatnonzero(store.split == 0), np.flatnonzero(store.split == 1)])
    assert len(rows) == len(store.doc_ids)
    before = grouped_folds(store.doc_ids[rows], cfg.crossfit.n_folds, cfg.seed)
    np.testing.assert_array_equal(run_folds(store, rows, open_run(cfg, False)), before)


def test_a_corrupted_checkpoint_is_recomputed_with_a_warning(
    study: Any, lm: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, res = study
    stages = Path(cfg.out) / "stages"
    report, depth = stages / "sae_baseline.json", stages / "depth.json"
    good, intact = json.loads(report.read_text()), depth.stat().st_mtime_ns
    report.write_text(json.dumps({**good, "edited": True}))  # a hand-edited checkpoint
    capsys.readouterr()
    again = run_study_a(cfg, model=lm, progress=False)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and str(report) in err
    assert json.loads(report.read_text()) == good  # recomputed: the same numbers again
    assert depth.stat().st_mtime_ns == intact  # intact checkpoints load, not recompute
    assert again["comparison"] == res["comparison"]


# --------------------------------------------------------------------------------------------
# bad input: one clear error each, before any expensive work


def test_target_shallower_than_source_is_an_error(tmp_path: Path, lm: Any) -> None:
    cfg = tiny_config(
        tmp_path / "r", source="blocks.2.hook_resid_post", target="blocks.1.hook_resid_post"
    )
    with pytest.raises(CrosslayerError, match="not deeper than source"):
        run_study_a(cfg, model=lm, progress=False)
    assert not (tmp_path / "r" / "store").exists()


def test_sae_whose_hook_is_not_the_target_is_an_error(study: Any, tmp_path: Path, lm: Any) -> None:
    trained = Path(study[0].out) / "saes" / "baseline"  # reads blocks.2.hook_resid_post
    cfg = tiny_config(tmp_path / "r", sae=str(trained), target="blocks.3.hook_resid_post")
    with pytest.raises(CrosslayerError, match=r"reads blocks\.2\.hook_resid_post.*blocks\.3"):
        run_study_a(cfg, model=lm, progress=False)


def test_too_few_tokens_for_a_split_is_an_error(tmp_path: Path, lm: Any) -> None:
    cfg = tiny_config(tmp_path / "r", tokens=300)
    with pytest.raises(CrosslayerError, match=r"split holds only \d+ tokens"):
        run_study_a(cfg, model=lm, progress=False)
    assert not (tmp_path / "r" / "store").exists()


def test_feature_set_with_no_alive_features_is_an_error(tmp_path: Path) -> None:
    import scipy.sparse as sp

    cfg = tiny_config(tmp_path / "r")
    run = study_a.open_run(cfg, progress=False)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(70, 8)).astype(np.float32)
    dense = np.zeros((70, 16), np.float32)
    dense[:3, 0] = 1.0  # fires, but only in the first document: dead in some training folds
    folds = np.repeat(np.arange(5), 14)
    with pytest.raises(CrosslayerError, match="no alive features"):
        study_a.score_features(run, "baseline", X, sp.csc_matrix(dense), folds, np.arange(70))


# --------------------------------------------------------------------------------------------
# the study's own configuration: Gemma 2 + a Gemma Scope params.npz, through the CLI


def test_gemma2_with_a_gemma_scope_npz_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from crosslayer.cli import main

    lm2 = tiny_model("gemma2", n_layers=4, d_model=64, seed=1)
    model_dir = tmp_path / "tiny-gemma-2"
    lm2.model.save_pretrained(model_dir)
    lm2.tokenizer.save_pretrained(model_dir)

    # A Gemma Scope 1 file of matching shapes where the study's would sit (layer_2 ≙ layer_20)
    d, n = 64, 32
    rng = np.random.default_rng(0)
    params = {
        "W_enc": rng.normal(0, 0.3, (d, n)).astype(np.float32),
        "W_dec": rng.normal(0, 0.3, (n, d)).astype(np.float32),
        "b_enc": np.zeros(n, np.float32),
        "b_dec": np.zeros(d, np.float32),
        "threshold": np.full(n, 1.0, np.float32),
    }
    npz = tmp_path / "gemma-scope-2b-pt-res" / "layer_2" / "width_16k" / "canonical" / "params.npz"
    npz.parent.mkdir(parents=True)
    np.savez(npz, **params)  # type: ignore[arg-type]

    out = tmp_path / "run"
    flags = ["--model", str(model_dir), "--sae", str(npz), "--out", str(out)]
    flags += ["--corpus", "builtin:news", "--tokens", "3000", "--width", "32", "--target-l0", "4"]
    sets = [
        "data.max_doc_chars=1500",
        "data.heldout_frac=0.25",
        "data.min_split_tokens=200",
        "sweep.enabled=false",
        "transcoder.study_recipe=false",
        "transcoder.mlp=false",
        "sae_training.epochs=1",
        "sae_training.batch_size=256",
        "probes.study_protocol=false",
        "crossfit.min_pos_fit=3",
        "crossfit.min_pos_score=2",
        "analysis.n_bootstrap=200",
    ]
    code = main(["run", *flags, "--no-progress", *(a for s in sets for a in ("--set", s))])
    assert code == 0
    printed = capsys.readouterr().out
    assert "0.5025" in printed and "pretrained SAE" in printed  # the summary table

    res = json.loads((out / "results.json").read_text())
    assert res["hooks"]["target"] == "blocks.2.hook_resid_post"  # read from the SAE's path
    assert res["model"]["model_type"] == "gemma2"
    assert res["depth_sweep"] is None
    # the JumpReLU threshold is kept (the study dropped it): recompute which features fire
    store = open_store(out / "store")
    act = store.activations("blocks.2.hook_resid_post")
    y = np.concatenate([act.to_numpy("train"), act.to_numpy("heldout")]).astype(np.float64)
    pre = y @ params["W_enc"] + params["b_enc"]
    fires = (pre > params["threshold"]).sum(0)
    relu_only = (pre > 0).sum(0)
    feats = res["features"]["pretrained"]["features"]
    np.testing.assert_array_equal(feats["n_pos"], fires[feats["index"]])
    assert (relu_only[feats["index"]] > fires[feats["index"]]).any()


# --------------------------------------------------------------------------------------------
# the real thing: Gemma 3 270M, quick profile (~3 min on 2 idle cores)


@pytest.mark.real_model
def test_quick_profile_on_gemma_3_270m(tmp_path: Path) -> None:
    from crosslayer.cli import main

    out = tmp_path / "quick"
    assert main(["run", "--profile", "quick", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["hooks"] == {"source": "hook_embed", "target": "blocks.12.hook_resid_post"}
    assert res["model"]["n_layers"] == 18 and res["data"]["n_tokens"] == 24_000
    ridge = res["transcoder"]["ridge"]
    assert 0.0 < ridge["heldout"]["explained_variance"] < 1.0
    # Gemma's few huge residual dimensions inflate the study's global-mean R²
    assert ridge["train"]["r2_global_mean"] > ridge["heldout"]["explained_variance"]
    for name in ("baseline", "residual"):
        assert res["features"][name]["n_alive"] > 100
        assert res["comparison"]["balanced_accuracy"][name]["n"] > 100
    assert len(res["depth_sweep"]["target_hooks"]) == 13
