"""The HTML report: sections for what ran, numbers equal to results.json, embedded images,
latent dashboards recomputed independently, escaping, and the CLI.

One small study A run (tiny model, ~20 s) plus study B's interpret, layers and contrast on
the same tiny model are shared by the module (fixture ``run``).
"""

from __future__ import annotations

import base64
import html as html_lib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from crosslayer.cli import main
from crosslayer.config import build_config
from crosslayer.experiments.contrast import ContrastItem, run_contrast
from crosslayer.experiments.interpret import run_interpret
from crosslayer.experiments.layers import run_layers
from crosslayer.experiments.pararel import Fact
from crosslayer.experiments.study_a import run_study_a
from crosslayer.model import tiny_model
from crosslayer.report import num, pct, pval, write_report
from crosslayer.report.dashboards import visible
from crosslayer.sae import load_sae
from crosslayer.store import collect, open_store
from tests.test_layers import make_sae

# Study A with every optional stage off except the SAEs and probes: the report must cope.
MINI: dict[str, Any] = {
    "corpus": "builtin:news",
    "tokens": 2000,
    "data": {"max_doc_chars": 800, "heldout_frac": 0.3, "min_split_tokens": 200, "context_len": 64},
    "sweep": {"enabled": False},
    "transcoder": {"study_recipe": False, "mlp": False},
    "sae_training": {"arch": "topk", "width": 32, "target_l0": 4, "epochs": 1, "batch_size": 256},
    "crossfit": {"n_folds": 3, "min_pos_fit": 10, "min_pos_score": 5},
    "probes": {"study_protocol": False},
    "analysis": {"n_bootstrap": 200, "n_extreme": 2, "top_k": 3, "window": 6},
}
HOSTILE = "<i>Turing</i> & co"  # must come out escaped


def make_run(root: Path, lm: Any, **overrides: Any) -> Path:
    """A run directory with study A at its root and study B's experiments in sub-directories
    (``overrides``: study A's config on top of :data:`MINI`)."""
    out = root / "run"
    run_study_a(build_config("quick", overrides={**MINI, **overrides, "out": str(out)}),
                model=lm, progress=False)  # fmt: skip
    hook = "blocks.1.hook_mlp_out"
    sae = make_sae(hook, d_in=lm.d_model, d_sae=24)
    sae.cfg.metadata.neuronpedia_id = "gemma-2-2b/1-gemmascope-mlp-16k"
    store = collect(lm, [hook], corpus="builtin:news", n_tokens=300, out=root / "b_store",
                    context_len=32, progress=False)  # fmt: skip
    facts = [
        [Fact(0, f"{HOSTILE} works in [MASK].", "logic", "P"),
         Fact(0, "Turing studied [MASK].", "logic", "P")],
        [Fact(1, "Curie works in [MASK].", "physics", "P")],
    ]  # fmt: skip
    run_interpret(lm, facts, {1: sae}, top_k=3, store=store, n_contexts=2, out=out / "interpret")
    run_layers(lm, ["The cat sat on the mat."], out=out / "layers")
    items = [
        ContrastItem(str(i), f"What is {w}?", f"{w} is a thing.", "Hard to say.")
        for i, w in enumerate(["rain", "snow", "wind", "fog"])
    ]
    run_contrast(lm, items, layers=[1, 2], n_resamples=200, out=out / "contrast", progress=False)
    return out


@pytest.fixture(scope="module")
def lm() -> Any:
    return tiny_model("gemma3", n_layers=3, d_model=32)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, lm: Any) -> Path:
    return make_run(tmp_path_factory.mktemp("report"), lm)


@pytest.fixture(scope="module")
def html(run: Path, lm: Any) -> str:
    path = write_report(run, model=lm)
    assert path == run / "report.html"
    return path.read_bytes().decode("utf-8")


def results(path: Path) -> dict[str, Any]:
    return dict(json.loads((path / "results.json").read_text()))


def section(html: str, kind: str) -> str:
    m = re.search(rf'<section class="experiment" id="{kind}".*?</section>', html, re.S)
    assert m, f"no {kind} section"
    return m.group(0)


def row(html: str, attr: str) -> str:
    m = re.search(rf"<tr {attr}[^>]*>.*?</tr>", html, re.S)
    assert m, f"no row {attr}"
    return m.group(0)


def dashboard(html: str, anchor: str) -> str:
    m = re.search(rf'<article class="dashboard" id="{anchor}">.*?</article>', html, re.S)
    assert m, f"no dashboard {anchor}"
    return m.group(0)


def tokens_of(board: str) -> list[list[tuple[str, float, float]]]:
    """Each context of a dashboard as (text, data-act, colour alpha) per token."""
    out = []
    for ctx in re.findall(r'<div class="ctx".*?</div>', board, re.S):
        spans = re.findall(
            r'data-act="([^"]*)"[^>]*rgba\(255, 120, 0, ([0-9.]+)\)">(.*?)</span>', ctx, re.S
        )
        out.append([(text, float(act), float(alpha)) for act, alpha, text in spans])
    return out


# --------------------------------------------------------------------------------------------


def test_one_section_per_experiment_that_ran(run: Path, html: str, tmp_path: Path) -> None:
    kinds = re.findall(r'<section class="experiment" id="[^"]+" data-kind="([^"]+)"', html)
    assert kinds == ["study_a", "layers", "contrast", "interpret"]
    # study A ran without sweep, Adam recipe, MLP and study protocol: their parts are absent
    a = section(html, "study_a")
    assert "Depth sweep" not in a and 'data-key="transcoder.mlp' not in a
    assert (
        'data-key="transcoder.study_recipe"' not in a
        and 'data-metric="study_protocol_accuracy"' not in a
    )
    # a directory holding only study B's contrast: only that section, no dashboards
    only = tmp_path / "only"
    shutil.copytree(run / "contrast", only / "contrast")
    page = write_report(only).read_text(encoding="utf-8")
    assert re.findall(r'<section class="experiment" id="[^"]+" data-kind="([^"]+)"', page) == [
        "contrast"
    ]
    assert 'id="dashboards"' not in page and 'id="study_a"' not in page


def test_numbers_equal_results_json(run: Path, html: str) -> None:
    a, r = section(html, "study_a"), results(run)
    tc, cmp = r["transcoder"]["ridge"], r["comparison"]
    ev = num(tc["heldout"]["explained_variance"])
    assert ev in row(a, 'data-key="transcoder.ridge.heldout.explained_variance"')
    assert num(tc["train"]["r2_global_mean"]) in row(a, 'data-key="transcoder.ridge.train')
    assert "0.5025" in row(a, 'data-key="transcoder.ridge.train')  # the study's, beside ours
    for name in ("baseline", "residual"):
        got = row(a, f'data-key="comparison.balanced_accuracy.{name}.mean"')
        assert num(cmp["balanced_accuracy"][name]["mean"]) in got
    c = cmp["auroc"]
    got = row(a, 'data-metric="auroc"')
    assert num(c["diff_mean"]) in got and num(c["diff_mean_ci95"][0]) in got
    assert pval(c["mannwhitney_p"]) in got

    lay = results(run / "layers")
    assert num(lay["adjacent_layer_cosine"]["resid"]) in row(
        section(html, "layers"), 'data-kind="resid"'
    )
    con = results(run / "contrast")
    for rr in con["layers"]["resid"]:
        got = row(section(html, "contrast"), f'data-kind="resid" data-layer="{rr["layer"]}"')
        assert num(rr["mean_diff"]) in got and pval(rr["p_adjusted"]) in got
    assert num(con["likelihood"]["auroc"]) in row(
        section(html, "contrast"), 'data-kind="likelihood"'
    )
    it = results(run / "interpret")["layers"]["answer"][0]
    got = row(section(html, "interpret"), 'data-position="answer" data-layer="1"')
    assert num(it["share_promoting"]) in got and num(it["share_promoting_null_matched"]) in got


def test_headline_is_the_decomposition_with_the_seed_figure_against_mean_only(
    run: Path, html: str
) -> None:
    """The first table of study A is the decomposition, predictors in order, and its last row
    puts the seed study's global-mean R² against the mean-only predictor's, recomputed here."""
    a, r = section(html, "study_a"), results(run)
    first = re.search(r"<table[^>]*>.*?</table>", a, re.S)
    assert first and 'class="decomposition headline"' in first.group(0)
    table = first.group(0)
    order = re.findall(r'<tr data-predictor="([^"]+)"', table)
    assert order == ["mean", "linear", "token", "context_1", "context_2", "context_3",
                     "context_4", "rest"]  # fmt: skip
    dec = r["decomposition"][r["hooks"]["target"]]
    for p in order:
        assert num(dec[p]["ev"]) in row(table, f'data-predictor="{p}"')
        # each document-bootstrap CI is centred on its estimate; resamples whose SST was
        # re-centred on their own mean put it at the upper edge (mean: EV -0.0204 in
        # [-0.0507, -0.0192]), 0.4-0.5 widths above the midpoint
        for key, ci in (("ev", "ci95"), ("ev_standardised", "ev_standardised_ci95")):
            lo, hi = dec[p][ci]
            assert abs((lo + hi) / 2 - dec[p][key]) < 0.2 * (hi - lo), (p, key, lo, hi)
    seed = row(table, 'data-key="seed_vs_mean_only"')
    assert table.rstrip().endswith("</table>") and table.index(seed) > table.index("rest</code>")
    # the mean-only predictor's global-mean R², written out from the store
    store = open_store(run / "store")
    Y = store.activations(r["hooks"]["target"])
    Ytr = Y.to_numpy("train").astype(np.float64)
    Yh = Y.to_numpy("heldout").astype(np.float64)
    mu = Ytr.mean(0)
    for y, key in ((Ytr, "train"), (Yh, "heldout")):
        want = 1 - ((y - mu) ** 2).sum() / ((y - y.mean()) ** 2).sum()
        got = r["transcoder"]["mean_only"][key]["r2_global_mean"]
        assert got == pytest.approx(want, abs=1e-9)
        assert num(got) in seed
    assert num(r["transcoder"]["ridge"]["train"]["r2_global_mean"]) in seed and "0.5025" in seed


def test_variance_split_columns_and_figure(run: Path, html: str) -> None:
    """``var_linear``/``var_token_extra``/``var_rest`` of the Parquet table equal their
    definition written out from ``r2`` and ``token_r2``, sum to 1, and the figure is shown."""
    import pandas as pd

    for name in ("baseline", "residual"):
        t = pd.read_parquet(run / "features" / f"{name}.parquet")
        r2, tok = t["r2"].to_numpy(), t["token_r2"].to_numpy()
        probed = t["probed"].to_numpy(bool)
        assert probed.sum() >= 2
        lin = np.minimum(np.maximum(r2, 0), 1)
        top = np.minimum(np.maximum(np.maximum(tok, r2), 0), 1)
        for col, want in (("var_linear", lin), ("var_token_extra", top - lin),
                          ("var_rest", 1 - top)):  # fmt: skip
            got = t[col].to_numpy()
            np.testing.assert_allclose(got[probed], want[probed], atol=1e-12, err_msg=col)
            assert np.isnan(got[~probed]).all()
        total = t.loc[probed, ["var_linear", "var_token_extra", "var_rest"]].sum(axis=1)
        np.testing.assert_allclose(total, 1.0, atol=1e-12)
        assert (t.loc[probed, ["var_linear", "var_token_extra", "var_rest"]] >= 0).all().all()
    a = section(html, "study_a")
    fig = re.search(r'<figure data-name="variance_split">.*?</figure>', a, re.S)
    assert fig and "ceiling of any function of the embedding" in fig.group(0)


def test_plots_are_embedded_and_nothing_is_fetched(run: Path, html: str) -> None:
    pngs = {p.stem for d in (run, run / "layers", run / "contrast", run / "interpret")
            for p in d.glob("*.png")}  # fmt: skip
    shown = re.findall(r'<figure data-name="([^"]+)">\s*<img src="([^"]+)"', html)
    assert {name for name, _ in shown} == pngs and len(shown) == len(pngs)
    for name, src in shown:
        assert src.startswith("data:image/png;base64,"), name
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # nothing loads from anywhere: every src is a data URI; the only links are anchors and
    # Neuronpedia dashboards; no script, no stylesheet link
    assert all(s.startswith("data:") for s in re.findall(r'\ssrc="([^"]*)"', html))
    hrefs = re.findall(r'href="([^"]*)"', html)
    assert all(h.startswith("#") or h.startswith("https://neuronpedia.org/") for h in hrefs)
    assert "<script" not in html and "<link" not in html and "@import" not in html


def test_study_a_dashboards_recomputed_from_store_and_sae(run: Path, html: str, lm: Any) -> None:
    r = results(run)
    item = r["features"]["baseline"]["extremes"]["most"][0]
    feature = item["feature"]
    link = f'href="#latent-a-baseline-{feature}"'
    assert link in section(html, "study_a")  # the extremes table links to the dashboard
    board = dashboard(html, f"latent-a-baseline-{feature}")
    # independently: encode the whole store with the saved SAE, take the top token
    store = open_store(run / "store")
    sae = load_sae(run / "saes" / "baseline")
    y = store.activations(r["hooks"]["target"]).to_numpy().astype(np.float32)
    with torch.no_grad():
        acts = sae.encode(torch.from_numpy(y))[:, feature].numpy()
    top = int(np.argmax(acts))
    near = np.flatnonzero((store.context_ids == store.context_ids[top])
                          & (store.positions >= store.positions[top] - 6)
                          & (store.positions <= store.positions[top] + 2))  # fmt: skip
    first = tokens_of(board)[0]
    assert [html_lib.unescape(t) for t, _, _ in first] == [
        visible(lm.tokenizer.decode([int(t)])) for t in store.tokens[near]
    ]
    np.testing.assert_allclose([a for _, a, _ in first], acts[near], atol=1e-4)
    # colour: the top token is fully coloured, the others in proportion
    np.testing.assert_allclose([al for _, _, al in first], np.clip(acts[near] / acts[top], 0, 1),
                               atol=0.006)  # fmt: skip
    assert pct(float(np.mean(acts > 0)), 3) in row(board, 'data-metric="run_density"')
    assert 'class="histogram" src="data:image/png' in board
    # promoted and suppressed tokens: the direction through the final norm's gain and W_U
    # (gain read off the norm module here: RMSNorm of a constant vector is its gain)
    norm = lm.model.model.norm
    with torch.no_grad():
        gain = norm(torch.full((1, lm.d_model), 3.0))[0] * (1 + norm.eps / 9) ** 0.5
    logits = (sae.W_dec[feature].detach().double() * gain.double()) @ lm.unembed().double()
    promoted = re.search(r'data-side="promoted">(.*?)</div>', board, re.S)[1]
    suppressed = re.search(r'data-side="suppressed">(.*?)</div>', board, re.S)[1]
    spans = [re.findall(r'<span title="logit weight [^"]*">(.*?)</span>', side, re.S)
             for side in (promoted, suppressed)]  # fmt: skip
    want = [logits.topk(10).indices, logits.topk(10, largest=False).indices]
    for got, ids in zip(spans, want, strict=True):
        assert [html_lib.unescape(t) for t in got] == [lm.tokenizer.decode([int(i)]) for i in ids]
    # contexts sampled from each quarter of the non-zero activations
    active = acts[acts > 0]
    edges = np.quantile(active, [0, 0.25, 0.5, 0.75, 1])
    pieces = board.split('<div class="qgroup" data-band="')[1:]  # one per band, in order
    bands = [p.split('"', 1) for p in pieces]
    assert [b for b, _ in bands] == ["0%–25%", "25%–50%", "50%–75%", "75%–100%"]
    for i, (_, body) in enumerate(bands):
        lo, hi = edges[i], edges[i + 1]
        inside = ((active >= lo) if i == 0 else (active > lo)) & (active <= hi)
        assert f"of {int(inside.sum()):,} tokens, sampled" in body
        assert f"{lo:.3f} to {hi:.3f}" in body
        ctxs = tokens_of(body)
        assert len(ctxs) == min(2, int(inside.sum())) > 0
        for ctx in ctxs:  # each sampled context holds a token of its band
            assert any(lo - 1e-4 <= a <= hi + 1e-4 for _, a, _ in ctx), (i, ctx)
    # predictability from the early layer, as probed
    assert num(item["balanced_accuracy"]) in row(board, 'data-metric="balanced_accuracy"')


def test_study_b_dashboards_show_each_latent_with_per_token_colour(run: Path, html: str) -> None:
    interp = section(html, "interpret")
    latents = results(run / "interpret")["latents"]
    assert latents
    for info in latents:
        anchor = f"latent-b-{info['layer']}-{info['index']}"
        assert f'href="#{anchor}"' in interp  # top latents link to their dashboards
        board = dashboard(html, anchor)
        assert f"https://neuronpedia.org/gemma-2-2b/1-gemmascope-mlp-16k/{info['index']}" in board
        top = max(max(c["acts"]) for c in info["contexts"])
        shown = tokens_of(board)
        assert len(shown) == len(info["contexts"])
        for ctx, got in zip(info["contexts"], shown, strict=True):
            assert [html_lib.unescape(t) for t, _, _ in got] == [visible(t) for t in ctx["tokens"]]
            np.testing.assert_allclose([al for _, _, al in got],
                                       np.array(ctx["acts"]) / top, atol=0.006)  # fmt: skip
        spans = re.findall(r'<span title="logit weight [^"]*">(.*?)</span>', board, re.S)
        promoted = [html_lib.unescape(s) for s in spans]
        assert promoted == [t for t, _ in info["promoted"]]


def test_user_text_is_escaped(html: str) -> None:
    assert "&lt;i&gt;Turing&lt;/i&gt; &amp; co" in html
    assert "<i>Turing</i>" not in html


def test_cli_writes_the_report_and_errors_are_one_line(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.html"
    assert main(["report", str(run / "layers"), "--out", str(out), "--no-model"]) == 0
    assert 'data-kind="layers"' in out.read_text(encoding="utf-8")
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no experiment results found" in err and "crosslayer run" in err
    assert len(err.splitlines()) <= 2  # one logical line (rich may wrap it)
