"""Study A's figures, drawn from ``results.json`` alone (so they can be redrawn from any run).

* ``study_a.png`` — the study's four-panel figure with correct metrics: (a) transcoder R², ours
  (held-out, per-dimension means) beside the study's (global mean, on the training data) for
  the ridge, Adam and MLP maps; (b) the per-dimension R² distribution; (c) baseline vs
  residual feature predictability; (d) predictability against feature density.
* ``depth_curve.png`` — out-of-fold explained variance from the source to every ``resid_post``.
* ``feature_predictability.png`` — per feature: predictability against density and against
  token-lookup R², for every SAE probed.
* ``variance_split.png`` — per SAE, every probed feature's out-of-fold variance split into
  linear-in-embedding, token-determined beyond linear and the rest (``var_*`` columns of
  ``features/<sae>.parquet``), features sorted, as stacked areas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from crosslayer.experiments.study_a.features import variance_split
from crosslayer.plotting import write_pngs

COLORS = {"baseline": "tab:blue", "residual": "tab:orange", "pretrained": "tab:green"}
METRIC_LABELS = {
    "balanced_accuracy": "out-of-fold balanced accuracy",
    "auroc": "out-of-fold AUROC",
    "r2": "out-of-fold R²",
}


def _arr(values: Any) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in (values or [])], dtype=np.float64)


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def transcoder_panel(ax: Axes, results: dict[str, Any]) -> None:
    """(a) R² of each transcoder: ours (held-out EV) and the study's metric (global mean, train)."""
    tc = results["transcoder"]
    names = [n for n in ("ridge", "study_recipe", "mlp") if n in tc]
    labels = {"ridge": "ridge\n(ours)", "study_recipe": "Adam\n(study recipe)", "mlp": "MLP"}
    x = np.arange(len(names))
    ours = [_num(tc[n]["heldout"]["explained_variance"]) for n in names]
    theirs = [_num(tc[n]["train"]["r2_global_mean"]) for n in names]
    ax.bar(x - 0.2, ours, 0.4, label="held-out, per-dim means (ours)", color="tab:blue")
    ax.bar(x + 0.2, theirs, 0.4, label="train, one global mean (study's R²)", color="tab:gray")
    for xi, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        ax.text(xi - 0.2, max(a, 0), f"{a:.2f}", ha="center", va="bottom", fontsize=7)
        ax.text(xi + 0.2, max(b, 0), f"{b:.2f}", ha="center", va="bottom", fontsize=7)
        # ^ labels sit at 0 for negative bars, so a bar clipped at -1 still shows its value
    ref = results["study_reference"]
    ax.axhline(ref["transcoder_r2"], ls=":", color="k", lw=1)
    ax.text(len(names) - 0.5, ref["transcoder_r2"], f"study: {ref['transcoder_r2']} (Gemma 2 2B)",
            ha="right", va="bottom", fontsize=7)  # fmt: skip
    ax.set_xticks(x, [labels[n] for n in names], fontsize=8)
    low = min(0.0, *(v for v in ours + theirs if np.isfinite(v)))
    ax.set_ylim(max(low, -1.0) - 0.05, 1.05)  # a diverged fit is labelled, not drawn to scale
    ax.set_ylabel("R²")
    h = results["hooks"]
    ax.set_title(f"(a) transcoder {h['source']} → {h['target']}", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")


def per_dim_panel(ax: Axes, results: dict[str, Any]) -> None:
    """(b) Histogram of the held-out R² of each target dimension."""
    tc = results["transcoder"]
    for name, color in (("ridge", "tab:blue"), ("study_recipe", "tab:gray"), ("mlp", "tab:red")):
        if name not in tc:
            continue
        r2 = _arr(tc[name]["heldout"]["r2_per_dim"])
        r2 = r2[np.isfinite(r2)]
        if r2.size == 0:
            continue
        label = {"ridge": "ridge", "study_recipe": "Adam (study)", "mlp": "MLP"}[name]
        ax.hist(np.clip(r2, -1, 1), bins=40, range=(-1, 1), histtype="step", color=color,
                label=f"{label}: median {np.median(r2):.2f}")  # fmt: skip
    ax.set_xlabel("held-out R² per target dimension (clipped to [-1, 1])")
    ax.set_ylabel("dimensions")
    ax.set_title("(b) per-dimension R²", fontsize=9)
    ax.legend(fontsize=7)


def predictability_panel(ax: Axes, results: dict[str, Any]) -> None:
    """(c) Baseline vs residual feature predictability, with the study's means marked."""
    metric = results["comparison"]["headline_metric"]
    values = {n: _arr(results["features"][n]["features"][metric]) for n in ("baseline", "residual")}
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values()])
    lo = (
        -1.0 if metric == "r2" else min(0.4, np.floor(finite.min() * 20) / 20 if finite.size else 0)
    )
    for name, v in values.items():
        v = v[np.isfinite(v)]
        if metric == "r2":
            v = np.clip(v, -1.0, 1.0)
        if v.size:
            ax.hist(v, bins=30, range=(lo, 1.0), histtype="step", color=COLORS[name], lw=1.5,
                    label=f"{name}: mean {v.mean():.3f} (n={v.size})")  # fmt: skip
            ax.axvline(v.mean(), color=COLORS[name], lw=1)
    ref = results["study_reference"]
    for key, name in (("baseline_accuracy", "baseline"), ("residual_accuracy", "residual")):
        ax.axvline(ref[key], color=COLORS[name], ls=":", lw=1)
    cmp = results["comparison"].get(metric, {})
    if "diff_mean" in cmp:
        lo_ci, hi_ci = cmp["diff_mean_ci95"]
        ax.set_title(f"(c) features: Δmean {cmp['diff_mean']:+.3f} [{lo_ci:+.3f}, {hi_ci:+.3f}], "
                     f"MW p={cmp['mannwhitney_p']:.2g}", fontsize=9)  # fmt: skip
    else:
        ax.set_title("(c) feature predictability", fontsize=9)
    ax.set_xlabel(f"{METRIC_LABELS[metric]} (dotted: study's accuracy, other protocol)")
    ax.set_ylabel("features")
    ax.legend(fontsize=7)


def _scatter(ax: Axes, results: dict[str, Any], x_key: str, log: bool) -> None:
    metric = results["comparison"]["headline_metric"]
    for name, res in results["features"].items():
        x, y = _arr(res["features"][x_key]), _arr(res["features"][metric])
        ok = np.isfinite(x) & np.isfinite(y) & ((x > 0) if log else True)
        ax.scatter(x[ok], y[ok], s=4, alpha=0.4, color=COLORS.get(name, "k"), label=name)
    if log:
        ax.set_xscale("log")
    ax.set_ylabel(METRIC_LABELS[metric])
    ax.legend(fontsize=7, markerscale=3)


def density_panel(ax: Axes, results: dict[str, Any]) -> None:
    """(d) Predictability against how often the feature fires."""
    _scatter(ax, results, "density", log=True)
    ax.set_xlabel("feature density (fraction of train tokens active)")
    ax.set_title("(d) predictability vs density", fontsize=9)


def study_figure(results: dict[str, Any]) -> Figure:
    """The four-panel figure."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    transcoder_panel(axes[0, 0], results)
    per_dim_panel(axes[0, 1], results)
    predictability_panel(axes[1, 0], results)
    density_panel(axes[1, 1], results)
    model = results["model"].get("spec", "?")
    fig.suptitle(f"Study A on {model}: {results['data']['n_tokens']:,} tokens "
                 f"({results['data']['n_heldout']:,} held out)", fontsize=11)  # fmt: skip
    fig.tight_layout()
    return fig


def depth_figure(results: dict[str, Any]) -> Figure:
    """Cross-fitted explained variance (with its CI) and the study's train global-mean R²."""
    d = results["depth_sweep"]
    layers = [int(h.split(".")[1]) for h in d["target_hooks"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ev = _arr(d["explained_variance"])
    ci = np.array([[np.nan if v is None else v for v in (c or [None, None])]
                   for c in d["explained_variance_ci95"]], dtype=np.float64)  # fmt: skip
    ax.plot(layers, ev, "o-", label="out-of-fold EV, linear (ours)")
    ax.fill_between(layers, ci[:, 0], ci[:, 1], alpha=0.2, label="95% CI (documents)")
    ax.plot(layers, _arr(d["token_explained_variance"]), "^:", label="out-of-fold EV, token")
    old = d["holdout_chosen"]
    ax.plot(layers, _arr(old["train_r2_global_mean"]), "s--", color="tab:gray",
            label="train, global-mean R² (study's)")  # fmt: skip
    target = results["hooks"]["target"]
    if target.endswith("hook_resid_post"):
        ax.axvline(int(target.split(".")[1]), color="k", ls=":", lw=1, label=f"target {target}")
    ax.set_xlabel("block L (blocks.L.hook_resid_post)")
    ax.set_ylabel("explained variance")
    low = float(np.nanmin(ev)) if np.isfinite(ev).any() else 0.0
    ax.set_ylim(min(0.0, low) - 0.05, 1.05)
    ax.set_title(f"Depth sweep from {d['source_hook']} (folds by document; "
                 f"{min(d['n_tokens']):,}-{max(d['n_tokens']):,} tokens per layer)",
                 fontsize=9)  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def feature_figure(results: dict[str, Any]) -> Figure:
    """Predictability against density and against token-lookup R², per feature."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    _scatter(axes[0], results, "density", log=True)
    axes[0].set_xlabel("feature density (fraction of train tokens active)")
    _scatter(axes[1], results, "token_r2", log=False)
    axes[1].set_xlabel("token-lookup R² (out of fold: E[f | token] from the other documents)")
    fig.suptitle("Which features the source layer predicts", fontsize=10)
    fig.tight_layout()
    return fig


SPLIT_COLORS = {"var_linear": "tab:blue", "var_token_extra": "tab:green", "var_rest": "0.8"}
SPLIT_LABELS = {
    "var_linear": "linear in the embedding (ridge R²)",
    "var_token_extra": "token-determined beyond linear (lookup R² − ridge R²)",
    "var_rest": "the rest (1 − lookup R²)",
}


def split_of(feats: dict[str, Any]) -> dict[str, np.ndarray]:
    """The ``var_*`` columns of one SAE's per-feature JSON (recomputed from ``r2`` and
    ``token_r2`` for runs from before the columns), probed features only, sorted by linear
    then token share."""
    f = feats["features"]
    if all(k in f for k in SPLIT_COLORS):
        split = {k: _arr(f[k]) for k in SPLIT_COLORS}
    else:
        split = variance_split(_arr(f["r2"]), _arr(f["token_r2"]))
    ok = np.isfinite(split["var_linear"])
    order = np.lexsort((-split["var_token_extra"][ok], -split["var_linear"][ok]))
    return {k: v[ok][order] for k, v in split.items()}


def variance_split_figure(results: dict[str, Any]) -> Figure:
    """Per SAE, every probed feature's variance split, sorted, as stacked areas."""
    names = [n for n in ("baseline", "residual", "pretrained") if n in results["features"]]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), sharey=True,
                             squeeze=False)  # fmt: skip
    for ax, name in zip(axes[0], names, strict=True):
        split = split_of(results["features"][name])
        n = len(split["var_linear"])
        x = (np.arange(n) + 0.5) / max(n, 1)
        ax.stackplot(x, *split.values(), colors=list(SPLIT_COLORS.values()),
                     labels=list(SPLIT_LABELS.values()), step=None)  # fmt: skip
        means = ", ".join(f"{k[4:]} {np.mean(v):.2f}" for k, v in split.items()) if n else "–"
        ax.set_title(f"{name} SAE: {n} probed features\nmean {means}", fontsize=9)
        ax.set_xlabel("features, sorted by linear then token share (fraction)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0, 0].set_ylabel("share of out-of-fold variance")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    run = results.get("config_hash", "?")
    fig.suptitle(f"Per-feature variance split ({results['model'].get('spec', '?')}, "
                 f"run config {str(run)[:12]})", fontsize=10)  # fmt: skip
    fig.tight_layout()
    return fig


def write_plots(results: dict[str, Any], out: str | Path) -> list[str]:
    """Draw every figure into ``out`` (each PNG written atomically); return the file names."""
    figures = {
        "study_a": study_figure(results),
        "feature_predictability": feature_figure(results),
        "variance_split": variance_split_figure(results),
    }
    if results.get("depth_sweep"):
        figures["depth_curve"] = depth_figure(results)
    return write_pngs(figures, out)
