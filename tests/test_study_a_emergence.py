"""The emergence stage on a tiny study A run: the matrix recomputed with scikit-learn from the
run's own sweep store, SAEs and transcoder; the emergence rule and the class counts checked
against the per-feature columns; the checkpoint reused; the report section rendered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from crosslayer.crossfit import count_positives, grouped_folds
from crosslayer.emergence import (
    CLASSES,
    UNSCORED,
    class_counts,
    classify,
    emergence_matrix,
    taxonomy_scores,
)
from crosslayer.experiments.study_a import run_study_a
from crosslayer.experiments.study_a.emergence import (
    EmergenceInputs,
    measure,
    run_emergence,
    summarise,
)
from crosslayer.experiments.study_a.inputs import Hooks
from crosslayer.experiments.study_a.run import Run, open_run
from crosslayer.model import tiny_model
from crosslayer.report import render_report
from crosslayer.sae import load_sae
from crosslayer.store import open_store
from crosslayer.transcoder import AffineTranscoder
from tests.test_emergence import _sklearn_crossfit
from tests.test_study_a import SOURCE, TARGET, TINY, tiny_config

# the tiny run without the stages the emergence stage does not read; two seeds per SAE
LEAN = {
    "transcoder": {"study_recipe": False, "mlp": False},
    "probes": {"study_protocol": False},
    "sae_training": {**TINY["sae_training"], "seeds": 2},
    # seed 1's matrix on a sample of 3 of its scored features (a real subset on this run)
    "emergence": {"seed_features": 3},
}


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    lm = tiny_model("gemma3", n_layers=4, d_model=64)
    cfg = tiny_config(tmp_path_factory.mktemp("emergence") / "run", **LEAN)
    run_study_a(cfg, model=lm, progress=False)
    run = open_run(cfg, progress=False)
    out = Path(cfg.out)
    saes = {n: load_sae(out / "saes" / n) for n in ("baseline", "residual")}
    ridge = _ridge_transcoder(run)
    sweep = open_store(out / "sweep_store")
    res = run_emergence(run, EmergenceInputs(sweep, Hooks(SOURCE, TARGET), saes, ridge))
    return run, res, {"saes": saes, "ridge": ridge, "sweep": sweep, "lm": lm}


def _ridge_transcoder(run: Any) -> AffineTranscoder:
    """The run's ridge map: the ``transcoder/`` artefact where runs write one, else the
    stage's ``transcoder.npz`` (run directories from before the artefact)."""
    art = getattr(run.dirs, "transcoder", None)
    if isinstance(art, Path) and (art / "cfg.json").is_file():
        return AffineTranscoder.from_pretrained(art)  # type: ignore[attr-defined, no-any-return]
    saved = np.load(run.dirs.transcoder_weights)
    tc = AffineTranscoder()
    tc.coef_, tc.intercept_ = saved["coef"], saved["intercept"]
    tc.n_features_in_ = tc.coef_.shape[1]
    return tc


def test_matrix_recomputed_with_sklearn_from_the_run(stage: Any) -> None:
    run, res, parts = stage
    em = res["emergence"]
    assert em["hooks"] == ["hook_embed", *[f"blocks.{i}.hook_resid_post" for i in range(3)]]
    sweep = parts["sweep"]
    folds = _sweep_folds(run, sweep)
    X = sweep.activations(SOURCE).to_numpy(dtype=np.float32)
    Y = sweep.activations(TARGET).to_numpy(dtype=np.float32)
    # the residual SAE reads target - transcoder(source), written out independently
    R = Y - (X.astype(np.float64) @ parts["ridge"].coef_.T + parts["ridge"].intercept_)
    with torch.no_grad():
        F = parts["saes"]["residual"].encode(torch.from_numpy(R.astype(np.float32))).numpy()
    measured = json.loads(run.dirs.emergence.read_text())["saes"]["residual"]
    scored = np.asarray(measured["scored"])
    assert scored.size >= 2
    # positives are counted on these codes, over every row of the sweep store
    assert measured["n_pos"] == (F > 0).sum(0).tolist()
    # the library (checked against scikit-learn in test_emergence.py) on these codes alone,
    # from layers read here: the stage's residuals, rows, folds and SAE split all agree
    layers = {h: sweep.activations(h).to_numpy(dtype=np.float32) for h in em["hooks"]}
    ref = emergence_matrix(
        layers,
        F,
        folds,
        alphas=tuple(em["alphas"]),
        min_pos_fit=run.cfg.crossfit.min_pos_fit,
        min_pos_score=run.cfg.crossfit.min_pos_score,
    )
    np.testing.assert_array_equal(np.flatnonzero(ref.scorable), scored)
    np.testing.assert_allclose(_rows(measured["r2"]), ref.r2[scored], atol=1e-6)
    # float32 predictions: near-ties among ~2,500 scores may order differently when the
    # features are fitted in other blocks (both SAEs at once in the stage), ~1e-6 per swap
    np.testing.assert_allclose(_rows(measured["auroc"]), ref.auroc[scored], atol=1e-5)
    # and one feature from one layer against scikit-learn directly (float64)
    j, li = int(scored[0]), len(em["hooks"]) - 1
    x = layers[em["hooks"][li]].astype(np.float64)
    r2, auc = _sklearn_crossfit(x, F[:, j].astype(np.float64), folds, tuple(em["alphas"]))
    assert measured["r2"][0][li] == pytest.approx(r2, abs=1e-4)
    assert measured["auroc"][0][li] == pytest.approx(auc, abs=1e-4)


def _sweep_folds(run: Any, sweep: Any) -> np.ndarray:
    """The run's folds: made over the main store's documents, each sweep document keeps its
    fold."""
    main = open_store(Path(run.cfg.out) / "store")
    docs, first = np.unique(main.doc_ids, return_index=True)
    doc_fold = grouped_folds(main.doc_ids, run.cfg.crossfit.n_folds, run.cfg.seed)[first]
    folds = np.unique(doc_fold[np.searchsorted(docs, sweep.doc_ids)], return_inverse=True)[1]
    return np.asarray(folds)


def test_taxonomy_of_every_seed_with_a_seed_level_ci(stage: Any, tmp_path: Path) -> None:
    """Two seeds per SAE: seed 1's scores recomputed here from its own codes (its SAE loaded
    from the run, encoded on the input written out here, the minimum-positives rule and the
    taxonomy called directly); its classes at thresholds that split this tiny run's features
    (at its defaults every feature of the random model is long-context); the CI over the
    per-seed shares."""
    run, res, parts = stage
    cfg, cf = run.cfg.emergence, run.cfg.crossfit
    sweep, ridge = parts["sweep"], parts["ridge"]
    assert res["taxonomy"]["seeds"] == [run.cfg.seed, run.cfg.seed + 1]
    assert "one seed" not in res["taxonomy"]["note"]
    folds = _sweep_folds(run, sweep)
    X = sweep.activations(SOURCE).to_numpy(dtype=np.float32)
    Y = sweep.activations(TARGET).to_numpy(dtype=np.float32)
    R = Y - (X.astype(np.float64) @ ridge.coef_.T + ridge.intercept_)
    measured = json.loads(run.dirs.emergence.read_text())
    direct = {}
    for name, x in (("baseline", Y), ("residual", R)):
        sae = load_sae(Path(run.cfg.out) / "saes" / f"{name}_seed1")
        with torch.no_grad():
            F = sae.encode(torch.from_numpy(x.astype(np.float32))).numpy()
        rule = count_positives(F, folds, min_fit=cf.min_pos_fit, min_score=cf.min_pos_score)
        scored = np.flatnonzero(rule.status == "ok")
        assert scored.size >= 2
        direct[name] = taxonomy_scores(
            F[:, scored],
            folds,
            tokens=sweep.tokens,
            positions=sweep.positions,
            embed=X,
            context_ids=sweep.context_ids,
            k=cfg.context_k,
            dims=cfg.context_dims,
            alphas=tuple(res["emergence"]["alphas"]),
            n_permutations=cfg.n_permutations,
            seed=run.cfg.seed,
        )
        (seed1,) = measured["saes"][name]["seeds"]
        assert seed1["seed"] == 1 and seed1["scored"] == scored.tolist()
        for key in ("token_r2", "position_r2", "context_r2"):
            np.testing.assert_allclose(_rows([seed1[key]]), _rows([getattr(direct[name], key)]),
                                       atol=1e-5)  # fmt: skip
    # thresholds at the medians of seed 1's scores: several classes are non-empty
    both = {k: np.concatenate([getattr(d, k) for d in direct.values()])
            for k in ("token_r2", "position_r2", "context_r2")}  # fmt: skip
    low = {f"{k}_min": float(np.nanmedian(v)) for k, v in both.items()}
    low_cfg = run.cfg.model_copy(update={"emergence": cfg.model_copy(update=low)})
    tax = summarise(Run(low_cfg, tmp_path, progress=False), measured)["taxonomy"]
    n_classes = 0
    for name, scores in direct.items():
        t = tax["saes"][name]
        assert t["seeds"] == [run.cfg.seed, run.cfg.seed + 1]
        assert [p["seed"] for p in t["per_seed"]] == t["seeds"]
        assert t["per_seed"][0]["counts"] == t["counts"]  # seed 0: the matrix's features
        cls = classify(
            scores,
            token_min=low["token_r2_min"],
            position_min=low["position_r2_min"],
            context_min=low["context_r2_min"],
        )
        want = class_counts(cls)
        n_classes += sum(v > 0 for v in want.values())
        assert t["per_seed"][1]["counts"] == want
        assert t["per_seed"][1]["n_scored"] == len(cls)
        for c in CLASSES:
            shares = [p["counts"][c] / p["n_scored"] for p in t["per_seed"]]
            a = t["across_seeds"][c]
            assert a["n_seeds"] == 2
            assert a["mean_share"] == pytest.approx(np.mean(shares))
            half = 12.7062047 * np.std(shares, ddof=1) / np.sqrt(2)  # t_{0.975, 1}
            assert a["share_ci95"] == pytest.approx(
                [max(0.0, np.mean(shares) - half), min(1.0, np.mean(shares) + half)]
            )
    assert n_classes >= 4  # at least two classes per SAE on average: the counts can differ


def test_sampled_matrix_of_a_further_seed(stage: Any) -> None:
    """Seed 1's sampled features: drawn by the run's seed in the stage's order (baseline,
    residual, placebo), their matrix rows equal to :func:`emergence_matrix` run here on those
    columns of seed 1's codes alone, and its median emergence layer counted here from them."""
    run, res, parts = stage
    cf, n = run.cfg.crossfit, run.cfg.emergence.seed_features
    assert n == 3
    sweep, ridge, em = parts["sweep"], parts["ridge"], res["emergence"]
    folds = _sweep_folds(run, sweep)
    X = sweep.activations(SOURCE).to_numpy(dtype=np.float32)
    Y = sweep.activations(TARGET).to_numpy(dtype=np.float32)
    R = Y - (X.astype(np.float64) @ ridge.coef_.T + ridge.intercept_)
    layers = {h: sweep.activations(h).to_numpy(dtype=np.float32) for h in em["hooks"]}
    measured = json.loads(run.dirs.emergence.read_text())
    rng = np.random.default_rng(run.cfg.seed)
    for name, x in (("baseline", Y), ("residual", R)):
        (seed1,) = measured["saes"][name]["seeds"]
        scored = np.asarray(seed1["scored"])
        assert scored.size > n  # a sample, not all of them
        want = np.sort(rng.choice(scored, n, replace=False))
        assert seed1["sampled"] == want.tolist()
        sae = load_sae(Path(run.cfg.out) / "saes" / f"{name}_seed1")
        with torch.no_grad():
            F = sae.encode(torch.from_numpy(x.astype(np.float32))).numpy()
        ref = emergence_matrix(
            layers,
            F[:, want],
            folds,
            alphas=tuple(em["alphas"]),
            min_pos_fit=cf.min_pos_fit,
            min_pos_score=cf.min_pos_score,
        )
        assert ref.scorable.all()
        np.testing.assert_allclose(_rows(seed1["r2"]), ref.r2, atol=1e-6)
        np.testing.assert_allclose(_rows(seed1["auroc"]), ref.auroc, atol=1e-5)
        # seed 1's summary: emergence layer of each sampled feature by hand, then the median
        frac, cols = run.cfg.emergence.frac, []
        for row in ref.r2:
            best = np.nanmax(row)
            if best > 0:
                cols.append(min(i for i, v in enumerate(row) if v >= frac * best))
        s1 = em["saes"][name]["per_seed"][1]
        assert s1["seed"] == run.cfg.seed + 1 and s1["n_features"] == n
        assert s1["share_never_predictable"] == pytest.approx((n - len(cols)) / n)
        layer = em["layers"][int(np.floor(np.median(cols)))] if cols else None
        assert s1["median_emergence_layer"] == layer
        a = em["saes"][name]["across_seeds"]["median_emergence_layer"]
        per_seed = [p["median_emergence_layer"] for p in em["saes"][name]["per_seed"]]
        assert a["mean"] == pytest.approx(np.mean([v for v in per_seed if v is not None]))


def _rows(values: list[list[float | None]]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in r] for r in values], dtype=np.float64)


def test_per_feature_columns_follow_the_rule_and_the_counts(stage: Any) -> None:
    run, res, _ = stage
    em, tax, hooks = res["emergence"], res["taxonomy"], res["emergence"]["hooks"]
    measured = json.loads(run.dirs.emergence.read_text())["saes"]
    frac = run.cfg.emergence.frac
    for name, cols in res["features"].items():
        m, scored = measured[name], measured[name]["scored"]
        assert cols["feature"] == list(range(m["n_features"]))
        for row, j in enumerate(scored):
            r2 = [np.nan if v is None else v for v in m["r2"][row]]
            best = np.nanmax(r2)
            hook = cols["emergence_hook"][j]
            if best <= 0:
                assert hook is None and cols["emergence_layer"][j] is None
                continue
            first = min(i for i, v in enumerate(r2) if v >= frac * best)
            assert hook == hooks[first]
            assert cols["emergence_layer"][j] == (-1 if first == 0 else first - 1)
        unscored = [j for j in range(m["n_features"]) if j not in set(scored)]
        assert all(cols["class"][j] == UNSCORED for j in unscored)
        assert sum(em["saes"][name]["excluded"].values()) == len(unscored)
        counts = {c: cols["class"].count(c) for c in CLASSES}
        assert tax["saes"][name]["counts"] == counts
        assert sum(counts.values()) == len(scored) == em["saes"][name]["n_scored"]
        n_emerged = sum(v is not None for v in cols["emergence_hook"])
        assert n_emerged + em["saes"][name]["n_never_predictable"] == len(scored)
        assert sum(em["saes"][name]["emergence_layer_counts"].values()) == n_emerged
        assert len(tax["saes"][name]["across_seeds"]["long-context"]["share_ci95"]) == 2


def test_checkpoint_is_reused_and_plots_written(stage: Any) -> None:
    run, res, parts = stage
    before = run.dirs.emergence.stat().st_mtime_ns
    what = EmergenceInputs(parts["sweep"], Hooks(SOURCE, TARGET), parts["saes"], parts["ridge"])
    again = run_emergence(run, what)
    assert run.dirs.emergence.stat().st_mtime_ns == before
    assert json.dumps(again, sort_keys=True, default=str) == json.dumps(
        res, sort_keys=True, default=str
    )
    for name in res["emergence"]["plots"]:
        assert (run.out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_section_renders_the_counts(stage: Any) -> None:
    run, res, _ = stage
    results = json.loads(run.dirs.results.read_text())
    results |= {"emergence": res["emergence"], "taxonomy": res["taxonomy"]}
    from crosslayer import fs

    fs.atomic_write_json(run.dirs.results, fs.jsonable(results))
    html = render_report(run.out)
    assert 'id="emergence"' in html and "emergence_heatmap.png" in html
    for name, t in res["taxonomy"]["saes"].items():
        for c in CLASSES:
            cell = f'data-class="{c}">{t["counts"][c]:,} ('
            assert cell in html, (name, c)
            # two seeds: the mean share over seeds and its seed-level CI below the counts
            a = t["across_seeds"][c]
            lo, hi = (f"{100 * v:.1f}%" for v in a["share_ci95"])
            ci = f"2 seeds: {100 * a['mean_share']:.1f}% [{lo}, {hi}]</span></td>"
            assert ci in html.split(cell, 1)[1].split("</td>", 1)[0] + "</td>", (name, c)
    # the seed-level CIs: per dictionary its mean median token entropy [CI over seeds], and
    # each difference, paired by seed
    table = html.split('<table class="seed-ci">', 1)[1].split("</table>", 1)[0]
    for name, t in res["taxonomy"]["saes"].items():
        a = t["interpretability_across_seeds"]["token_entropy"]
        lo, hi = a["ci95"]
        cell = f'data-q="token_entropy">{a["mean_of_medians"]:.2f} [{lo:.2f}, {hi:.2f}]</td>'
        row = table.split(f'<tr data-sae="{name}">', 1)[1].split("</tr>", 1)[0]
        assert cell in row, name
    diffs = html.split('<table class="seed-diff">', 1)[1].split("</table>", 1)[0]
    for pair, d in res["taxonomy"]["differences"].items():
        row = diffs.split(f'<tr data-diff="{pair}">', 1)[1].split("</tr>", 1)[0]
        s = d["share"]["long-context"]
        lo, hi = (f"{100 * v:.1f}%" for v in s["ci95"])
        assert f'data-class="long-context">{100 * s["mean"]:.1f}% [{lo}, {hi}]</td>' in row


def test_given_inputs_encode_an_sae_on_them(stage: Any) -> None:
    """``inputs`` (e.g. the placebo's own input): the residual SAE given its residuals
    written out here measures what the default residual path measured."""
    run, _, parts = stage
    ridge = parts["ridge"]

    def given(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        return Y - (X.astype(np.float64) @ ridge.coef_.T + ridge.intercept_)

    sae = {"residual": parts["saes"]["residual"]}
    got = measure(
        run,
        EmergenceInputs(parts["sweep"], Hooks(SOURCE, TARGET), sae, ridge, (), {"residual": given}),
    )
    want = json.loads(run.dirs.emergence.read_text())["saes"]["residual"]
    assert got["saes"]["residual"]["input"] == "given"
    assert got["saes"]["residual"]["scored"].tolist() == want["scored"]
    np.testing.assert_allclose(_rows(got["saes"]["residual"]["r2"].tolist()), _rows(want["r2"]),
                               atol=1e-5)  # fmt: skip


def test_typical_features_of_each_class_side_by_side_link_to_their_dashboards(stage: Any) -> None:
    """Per class one row, one column per dictionary (placebo included), each example a link to
    a dashboard on the page; the placebo's dashboard is computed on the placebo's own input
    (target minus its removal), checked against that input written out here."""
    import re

    from crosslayer.experiments.study_a.placebo import PlaceboRemoval

    run, _, parts = stage
    results = json.loads(run.dirs.results.read_text())
    tax = results["taxonomy"]
    assert list(tax["saes"]) == ["baseline", "residual", "placebo"]
    html = render_report(run.out, model=parts["lm"])
    table = re.search(r'<table class="typical">.*?</table>', html, re.S)
    assert table, "no side-by-side table of typical features"
    ids = set(re.findall(r'<article class="dashboard" id="([^"]+)"', html))
    n_links = 0
    for c in CLASSES:
        row = re.search(rf'<tr data-class="{c}">.*?</tr>', table.group(0), re.S)
        assert row, c
        cells = re.findall(r'<td data-sae="([^"]+)">(.*?)</td>', row.group(0), re.S)
        assert [name for name, _ in cells] == list(tax["saes"])
        for name, cell in cells:
            want = [f"latent-a-{name}-{f}" for f in tax["saes"][name]["examples"][c]]
            assert re.findall(r'href="#([^"]+)"', cell) == want, (c, name)
            assert set(want) <= ids, (c, name)
            n_links += len(want)
    assert n_links >= 3
    # a placebo example's dashboard: its largest activation over the run's store
    f = next(f for fs in tax["saes"]["placebo"]["examples"].values() for f in fs)
    board = re.search(rf'<article class="dashboard" id="latent-a-placebo-{f}">.*?</article>',
                      html, re.S)  # fmt: skip
    assert board and "typical" in board.group(0)
    store = open_store(Path(run.cfg.out) / "store")
    X = store.activations(SOURCE).to_numpy(dtype=np.float64)
    Y = store.activations(TARGET).to_numpy(dtype=np.float64)
    R = Y - (X @ parts["ridge"].coef_.T + parts["ridge"].intercept_)
    removal = PlaceboRemoval.load(run.dirs.placebo)
    P = Y - ((R @ removal.directions) * removal.weights) @ removal.directions.T
    with torch.no_grad():
        acts = load_sae(Path(run.cfg.out) / "saes" / "placebo").encode(
            torch.from_numpy(P.astype(np.float32))
        )[:, f]
    top = float(re.findall(r'<div class="ctx" data-max="([^"]+)"', board.group(0))[0])
    assert top == pytest.approx(float(acts.max()), abs=2e-4)
