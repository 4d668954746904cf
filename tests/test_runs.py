"""Reusing results: ``crosslayer.load_run`` (config, results, DataFrames, the transcoder) and
``crosslayer compare`` (two tiny study A runs side by side), checked against the run's own
files read independently (JSON, safetensors, numpy)."""

from __future__ import annotations

import html as html_lib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import crosslayer
from crosslayer.cli import main
from crosslayer.config import build_config
from crosslayer.errors import CrosslayerError
from crosslayer.experiments.study_a import run_study_a
from crosslayer.model import tiny_model
from crosslayer.runs import write_table
from crosslayer.runs_compare import compare_runs
from tests.test_report import MINI

# MINI with a short depth sweep, so the compare report draws one.
SMALL: dict[str, Any] = {**MINI, "sweep": {"enabled": True, "tokens": 1200}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    lm = tiny_model("gemma3", n_layers=3, d_model=32)
    root = tmp_path_factory.mktemp("runs")
    out = []
    for seed in (0, 1):
        cfg = build_config(
            "quick", overrides={**SMALL, "seed": seed, "out": str(root / f"s{seed}")}
        )
        run_study_a(cfg, model=lm, progress=False)
        out.append(root / f"s{seed}")
    return out[0], out[1]


def _copy(src: Path, dst: Path, edit: Any = None) -> Path:
    """A copy of a run (stores left out: nothing here reads them), results.json edited."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("store", "sweep_store"))
    if edit is not None:
        res = json.loads((dst / "results.json").read_text())
        edit(res)
        (dst / "results.json").write_text(json.dumps(res))
    return dst


# --------------------------------------------------------------------------------------------
# load_run


def test_load_run_gives_config_results_and_tables(runs: tuple[Path, Path]) -> None:
    path = runs[0]
    run = crosslayer.load_run(path)
    raw = json.loads((path / "results.json").read_text())
    assert run.config.hash() == json.loads((path / "config.json").read_text())["config_hash"]
    assert run.results == raw and run.hooks == ("hook_embed", raw["hooks"]["target"])
    # the per-feature table holds the stage file's numbers, one row per feature it lists
    # (from features/<sae>.parquet where the run wrote one, else from these very lists)
    stage = json.loads((path / "stages" / "features_residual.json").read_text())["features"]
    df = run.features["residual"]
    assert df["feature"].tolist() == stage.get("feature", stage["index"])
    assert list(df.columns).count("feature") == 1
    for col in ("auroc", "balanced_accuracy", "r2", "density"):
        want = np.array([np.nan if v is None else v for v in stage[col]], dtype=float)
        np.testing.assert_allclose(df[col].to_numpy(float), want, rtol=1e-12, equal_nan=True)
    # the depth sweep: one row per hook, in the sweep's order
    sweep = raw["depth_sweep"]
    assert run.depth_sweep["hook"].tolist() == sweep["target_hooks"]
    np.testing.assert_array_equal(
        run.depth_sweep["explained_variance"], sweep["explained_variance"]
    )
    assert run.depth_sweep["n_tokens"].tolist() == sweep["n_tokens"]
    assert (run.depth_sweep["source_hook"] == sweep["source_hook"]).all()
    # the decomposition: one row per (hook, predictor), the numbers of results.json
    dec = run.decomposition.set_index(["hook", "predictor"])
    target = raw["hooks"]["target"]
    want = raw["decomposition"][target]["linear"]
    assert dec.loc[(target, "linear"), "ev"] == want["ev"]
    assert dec.loc[(target, "linear"), "ci95_low"] == want["ci95"][0]
    # the headline table: the comparison's numbers
    head = run.headline().set_index("metric")
    c = raw["comparison"]["balanced_accuracy"]
    assert head.loc["balanced_accuracy", "diff_mean"] == c["diff_mean"]
    assert head.loc["balanced_accuracy", "diff_ci95_low"] == c["diff_mean_ci95"][0]


def test_load_run_transcoder_predicts_like_the_saved_weights(runs: tuple[Path, Path]) -> None:
    from safetensors.numpy import load_file

    run = crosslayer.load_run(runs[0])
    w = load_file(str(runs[0] / "transcoder" / "model.safetensors"))
    x = np.random.default_rng(0).normal(size=(20, w["W"].shape[1]))
    np.testing.assert_allclose(run.transcoder.predict(x), x @ w["W"].T + w["b"], rtol=1e-5,
                               atol=1e-5)  # fmt: skip
    assert (run.transcoder.source_hook_, run.transcoder.target_hook_) == run.hooks
    # ... and it is the map the residual SAE was trained on: target - T(source) of the store
    store = run.store()
    src, tgt = (store.activations(h).to_numpy("heldout").astype(np.float64) for h in run.hooks)
    sae = run.sae("residual")
    assert sae.cfg.d_in == src.shape[1]
    resid = tgt - (src @ w["W"].T + w["b"])
    ev = run.results["saes"]["residual"]["heldout"]["explained_variance"]
    import torch

    with torch.no_grad():
        x = torch.as_tensor(resid, dtype=torch.float32)
        recon = sae.decode(sae.encode(x)).double().numpy()
    got = 1 - ((resid - recon) ** 2).sum() / ((resid - resid.mean(0)) ** 2).sum()
    assert got == pytest.approx(ev, abs=1e-4)
    with pytest.raises(CrosslayerError, match="no SAE 'nope'"):
        run.sae("nope")


def test_parquet_tables_are_preferred_and_have_a_csv_copy(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    path = _copy(runs[0], tmp_path / "run")
    base = crosslayer.load_run(path).features["baseline"]
    table = base.assign(scorable=base["feature"] % 2 == 0, excluded_reason=None)
    written = write_table(table, path / "features" / "baseline.parquet")
    assert written == path / "features" / "baseline.parquet"
    back = crosslayer.load_run(path).features["baseline"]
    pd.testing.assert_frame_equal(back, table)
    csv = pd.read_csv(path / "features" / "baseline.csv")
    np.testing.assert_allclose(csv["auroc"], table["auroc"], rtol=1e-12)
    assert csv["scorable"].tolist() == table["scorable"].tolist()


def test_decomposition_rows_come_from_results(runs: tuple[Path, Path], tmp_path: Path) -> None:
    dec = {
        "blocks.2.hook_resid_post": {
            "token": {"ev": 0.3, "ev_standardised": 0.25, "ci95": [0.2, 0.4], "n_docs": 9},
            "embed_ridge": {"ev": 0.5, "ev_standardised": 0.45, "ci95": [0.4, 0.6]},
        }
    }
    path = _copy(runs[0], tmp_path / "run", lambda r: r.__setitem__("decomposition", dec))
    df = crosslayer.load_run(path).decomposition
    assert df[["hook", "predictor"]].values.tolist() == [
        ["blocks.2.hook_resid_post", "token"],
        ["blocks.2.hook_resid_post", "embed_ridge"],
    ]
    assert df["ci95_low"].tolist() == [0.2, 0.4] and df["ci95_high"].tolist() == [0.4, 0.6]
    assert df["ev_standardised"].tolist() == [0.25, 0.45]


def test_load_run_refuses_what_is_not_a_finished_run(tmp_path: Path) -> None:
    with pytest.raises(CrosslayerError, match=r"no results\.json"):
        crosslayer.load_run(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"schema": "crosslayer.layers"}))
    with pytest.raises(CrosslayerError, match="not a study A results file"):
        crosslayer.load_run(tmp_path)


# --------------------------------------------------------------------------------------------
# compare


def _cells(html: str, attrs: str) -> list[str]:
    row = re.search(rf"<tr {attrs}>(.*?)</tr>", html, re.S)
    assert row, attrs
    return [html_lib.unescape(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row[1], re.S)]


def test_compare_two_runs_shows_each_runs_numbers(runs: tuple[Path, Path], tmp_path: Path):
    out = tmp_path / "cmp"
    cmp = compare_runs(runs, out)
    html = (out / "compare.html").read_text()
    assert cmp.labels == ["s0", "s1"] and ("seed", [0, 1]) in cmp.differences
    for label, path in zip(cmp.labels, runs, strict=True):
        res = json.loads((path / "results.json").read_text())
        c = res["comparison"]["auroc"]
        cells = _cells(html, f'data-run="{label}" data-metric="auroc"')
        lo, hi = c["diff_mean_ci95"]
        assert cells[4] == f"{c['diff_mean']:.4f} [{lo:.4f}, {hi:.4f}]"
        # the distribution table: quantiles of the per-feature column, by numpy
        col = np.array(res["features"]["baseline"]["features"]["auroc"], dtype=float)
        col = col[np.isfinite(col)]
        block = html[html.index('data-sae="baseline" data-score="auroc"') :]
        cells = _cells(block, f'data-run="{label}"')
        stats = (col.mean(), np.quantile(col, 0.25), np.median(col), np.quantile(col, 0.75))
        assert cells[1:] == [f"{len(col):,}", *(f"{v:.4f}" for v in stats)]
    # across the runs: the two differences' mean, SD and t-interval (scipy-free reference)
    d = [json.loads((p / "results.json").read_text())["comparison"]["auroc"]["diff_mean"]
         for p in runs]  # fmt: skip
    mean, sd = (d[0] + d[1]) / 2, abs(d[0] - d[1]) / 2**0.5
    half = 12.706204736174707 * sd / 2**0.5  # t(0.975, 1 d.o.f.)
    cells = _cells(html, 'data-spread="auroc"')
    assert cells[1:4] == ["2", f"{mean:.4f} [{mean - half:.4f}, {mean + half:.4f}]", f"{sd:.4f}"]
    spread = pd.read_csv(out / "spread.csv").set_index("metric")
    assert spread.loc["auroc", "ci95_high"] == pytest.approx(mean + half, rel=1e-9)
    assert html.count("data:image/png;base64,") >= 3  # headline, depth sweep, distributions
    assert "<script" not in html and "http://" not in html and "https://" not in html
    head = pd.read_csv(out / "headline.csv")
    comparison = json.loads((runs[0] / "results.json").read_text())["comparison"]
    metrics = [m for m, v in comparison.items() if isinstance(v, dict) and "diff_mean" in v]
    assert head["run"].tolist() == ["s0"] * len(metrics) + ["s1"] * len(metrics)
    assert head["metric"].tolist() == metrics * 2
    pd.testing.assert_frame_equal(pd.read_parquet(out / "headline.parquet"), head,
                                  check_dtype=False)  # fmt: skip
    # these runs have both (study A computes them): their sections are on the page
    assert 'id="emergence"' in html and 'id="decomposition"' in html


def test_compare_shows_decomposition_and_emergence_when_present(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    dec = {"blocks.2.hook_resid_post": {"token": {"ev": 0.3, "ci95": [0.2, 0.4]}}}
    copies = []
    for i, path in enumerate(runs):
        c = _copy(path, tmp_path / f"r{i}", lambda r: r.__setitem__("decomposition", dec))
        df = crosslayer.load_run(c).features["baseline"]
        layer = np.arange(len(df)) % 3 + i  # run r1's features emerge one layer later
        write_table(df.assign(emergence_layer=layer, **{"class": "positional"}),
                    c / "features" / "baseline.parquet")  # fmt: skip
        copies.append(c)
    cmp = compare_runs(copies, tmp_path / "cmp")
    [em] = [e for e in cmp.emergence if e.sae == "baseline"]
    assert [r["median"] for r in em.rows] == [1.0, 2.0]
    html = (tmp_path / "cmp" / "compare.html").read_text()
    assert 'id="emergence"' in html and 'id="decomposition"' in html
    assert pd.read_csv(tmp_path / "cmp" / "decomposition.csv")["run"].tolist() == ["r0", "r1"]


def test_runs_that_are_not_comparable_are_refused_naming_the_difference(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    other_source = _copy(
        runs[1],
        tmp_path / "src",
        lambda r: r["hooks"].__setitem__("source", "blocks.0.hook_resid_post"),
    )
    with pytest.raises(CrosslayerError, match=r"s0 reads source hook hook_embed, src reads "
                                              r"blocks\.0\.hook_resid_post"):  # fmt: skip
        compare_runs([runs[0], other_source], tmp_path / "o1")
    wider = _copy(
        runs[1], tmp_path / "wide", lambda r: r["saes"]["residual"].__setitem__("width", 64)
    )
    with pytest.raises(CrosslayerError, match="the residual SAE has width 32 in s0 but 64 in wide"):
        compare_runs([runs[0], wider], tmp_path / "o2")
    # headline figures only: allowed
    cmp = compare_runs([runs[0], wider], tmp_path / "o3", per_feature=False)
    assert cmp.distributions == [] and cmp.notes


def test_compare_cli(runs: tuple[Path, Path], tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "cli"
    assert main(["compare", str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    assert (out / "compare.html").is_file() and (out / "headline.parquet").is_file()
    capsys.readouterr()
    assert main(["compare", str(runs[0]), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "compare needs at least two runs, got 1" in err
