"""Two or more study A runs side by side: ``crosslayer compare RUN RUN ... --out DIR``.

>>> compare_runs(["runs/seed0", "runs/seed1"], "runs/compare")   # runs/compare/compare.html

Runs (seeds, corpora, layers, models) are compared on what each measured: the headline
baseline-vs-residual differences with their bootstrap CIs, the transcoder's held-out
explained variance, the depth sweep, the decomposition and the emergence layers when the runs
have them, and the distribution of every per-feature score. Only like is compared with like:
runs with different source hooks are refused, and so is a per-feature comparison of SAEs that
differ (architecture, width, hook or pretrained spec). The report is one self-contained HTML
file (figures embedded, no script, nothing from the network); its tables are written beside it
as Parquet + CSV.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from crosslayer import fs
from crosslayer.errors import CrosslayerError
from crosslayer.model.hooks import parse_hook
from crosslayer.provenance import versions
from crosslayer.report import environment, flatten
from crosslayer.report.figures import figure_uri, plt
from crosslayer.runs import LoadedRun, load_run, write_table

REPORT_NAME = "compare.html"
# Per-feature scores drawn as distributions, when every run has the column.
FEATURE_SCORES = ("balanced_accuracy", "auroc", "r2", "token_r2", "token_determinedness")
# What a per-feature comparison needs to be the same in every run, per SAE.
SAE_IDENTITY = ("architecture", "width", "d_in", "hook_name")


@dataclass
class Distribution:
    """One per-feature score of one SAE across the runs."""

    sae: str
    score: str
    rows: list[dict[str, Any]]  # per run: label, n, mean, q25, median, q75
    figure: str  # data URI


@dataclass
class Comparison:
    """Everything the compare report shows (also returned to library callers)."""

    labels: list[str]
    runs: list[LoadedRun]
    per_feature: bool
    differences: list[tuple[str, list[Any]]] = field(default_factory=list)
    headline: Any = None  # DataFrame: run x metric
    spread: list[dict[str, Any]] = field(default_factory=list)  # per metric, across the runs
    transcoder: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)
    decomposition: Any = None  # DataFrame: (run, hook, predictor) rows
    distributions: list[Distribution] = field(default_factory=list)
    emergence: list[Distribution] = field(default_factory=list)
    classes: list[dict[str, Any]] = field(default_factory=list)
    saes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _labels(paths: Sequence[Path]) -> list[str]:
    """Run directory names; made unique with their position when two runs share a name."""
    names = [p.resolve().name or str(p) for p in paths]
    return [n if names.count(n) == 1 else f"{i + 1}:{n}" for i, n in enumerate(names)]


def sae_identity(run: LoadedRun, sae: str) -> dict[str, Any]:
    """What makes two runs' SAEs of one name the same SAE design (and, if pretrained, file)."""
    info = (run.results.get("saes") or {}).get(sae) or {}
    ident = {k: info.get(k) for k in SAE_IDENTITY}
    if sae not in ("baseline", "residual"):
        ident["path"] = info.get("path")
    return ident


def check_comparable(runs: Sequence[LoadedRun], labels: Sequence[str], per_feature: bool) -> None:
    """Raise :class:`CrosslayerError` naming the first difference that makes runs incomparable."""
    _check_count(len(runs))
    first = runs[0].hooks[0]
    for run, label in zip(runs[1:], labels[1:], strict=True):
        if run.hooks[0] != first:
            raise CrosslayerError(
                f"runs are not comparable: {labels[0]} reads source hook {first}, "
                f"{label} reads {run.hooks[0]}",
                "compare runs made with the same --source",
            )
    if not per_feature:
        return
    for sae in shared_saes(runs):
        ref = sae_identity(runs[0], sae)
        for run, label in zip(runs[1:], labels[1:], strict=True):
            other = sae_identity(run, sae)
            diff = [k for k in ref if ref[k] != other[k]]
            if diff:
                k = diff[0]
                raise CrosslayerError(
                    f"per-feature comparison needs the same SAEs: the {sae} SAE has {k} "
                    f"{ref[k]} in {labels[0]} but {other[k]} in {label}",
                    "compare runs with the same SAE settings, or pass --no-features to "
                    "compare the headline figures only",
                )


def _check_count(n: int) -> None:
    if n < 2:
        raise CrosslayerError(
            f"compare needs at least two runs, got {n}", "pass two or more study A run directories"
        )


def shared_saes(runs: Sequence[LoadedRun]) -> list[str]:
    """SAE names every run probed, in the first run's order."""
    return [s for s in runs[0].features if all(s in r.features for r in runs[1:])]


def config_differences(runs: Sequence[LoadedRun]) -> list[tuple[str, list[Any]]]:
    """Dotted config keys whose value differs between runs, with each run's value."""
    flat = [dict(flatten(r.results.get("config", {}))) for r in runs]
    keys = sorted({k for f in flat for k in f})
    rows = [(k, [f.get(k) for f in flat]) for k in keys]
    rows = [(k, v) for k, v in rows if any(x != v[0] for x in v[1:])]
    for key, getter in (("model.weights", lambda r: r.results.get("model", {}).get("weights")),
                        ("hooks.target", lambda r: r.hooks[1])):  # fmt: skip
        values = [getter(r) for r in runs]
        if any(v != values[0] for v in values[1:]) and key not in dict(rows):
            rows.append((key, values))
    return rows


def compare_runs(
    runs: Sequence[str | Path], out: str | Path, *, per_feature: bool = True
) -> Comparison:
    """Compare study A runs and write ``OUT/compare.html`` plus its tables (Parquet + CSV).

    ``per_feature``: also compare the distributions of per-feature scores, which needs the
    same SAEs in every run (an error names the first difference otherwise).
    """
    paths, out = [Path(p) for p in runs], Path(out)
    _check_count(len(paths))  # before any work
    fs.check_dir_path(out)
    loaded = [load_run(p) for p in paths]
    labels = _labels(paths)
    check_comparable(loaded, labels, per_feature)
    cmp = Comparison(labels, loaded, per_feature, differences=config_differences(loaded))
    _headline(cmp)
    _sweep(cmp)
    _decomposition(cmp)
    if per_feature:
        _features(cmp)
    else:
        cmp.notes.append("per-feature scores not compared (--no-features)")
    out.mkdir(parents=True, exist_ok=True)
    if cmp.headline is not None and len(cmp.headline):
        write_table(cmp.headline, out / "headline.parquet")
    if cmp.spread:
        rows = [{**{k: v for k, v in s.items() if k != "ci95"}, "ci95_low": s["ci95"][0],
                 "ci95_high": s["ci95"][1]} for s in cmp.spread]  # fmt: skip
        write_table(pd.DataFrame(rows), out / "spread.parquet")
    if cmp.decomposition is not None:
        write_table(cmp.decomposition, out / "decomposition.parquet")
    html = render_comparison(cmp)
    fs.atomic_write_bytes(out / REPORT_NAME, html.encode("utf-8"))
    return cmp


# --------------------------------------------------------------------------------------------
# the parts


def _headline(cmp: Comparison) -> None:
    frames = []
    for label, run in zip(cmp.labels, cmp.runs, strict=True):
        df = run.headline()
        df.insert(0, "run", label)
        frames.append(df)
        ridge = (run.results.get("transcoder") or {}).get("ridge") or {}
        cmp.transcoder.append(
            {
                "run": label,
                "hooks": f"{run.hooks[0]} → {run.hooks[1]}",
                "ev": (ridge.get("heldout") or {}).get("explained_variance"),
                "n": (ridge.get("heldout") or {}).get("n_tokens"),
                "alpha": ridge.get("alpha"),
            }
        )
    cmp.headline = pd.concat(frames, ignore_index=True) if frames else None
    if cmp.headline is None or not len(cmp.headline):
        return
    metrics = list(dict.fromkeys(cmp.headline["metric"]))
    for metric in metrics:
        cmp.spread.append(run_spread(metric, cmp.headline))
    size = (3.2 * len(metrics), 1.0 + 0.35 * len(cmp.labels))
    fig, axes = plt.subplots(1, len(metrics), figsize=size, squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        rows = cmp.headline[cmp.headline["metric"] == metric]
        y = np.arange(len(rows))
        mid = rows["diff_mean"].to_numpy(float)
        err = np.abs(np.vstack([mid - rows["diff_ci95_low"], rows["diff_ci95_high"] - mid]))
        ax.errorbar(mid, y, xerr=err, fmt="o", color="tab:blue", capsize=3)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(y, list(rows["run"]), fontsize=7)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_title(f"{metric}: baseline − residual", fontsize=8)
        ax.tick_params(labelsize=7)
    cmp.figures["headline"] = figure_uri(fig)


def run_spread(metric: str, headline: Any) -> dict[str, Any]:
    """How much one metric's difference varies between the runs: the runs are the unit (a
    seed-level spread when the runs differ only in seed). Mean, sample SD, min, max of the
    runs' ``diff_mean`` and the 95% t-interval of their mean (n runs, n - 1 d.o.f.)."""
    d = headline.loc[headline["metric"] == metric, "diff_mean"].to_numpy(float)
    d = d[np.isfinite(d)]
    n = int(d.size)
    mean = float(d.mean()) if n else np.nan
    sd = float(d.std(ddof=1)) if n > 1 else np.nan
    half = float(stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n)) if n > 1 else np.nan
    return {"metric": metric, "n_runs": n, "mean": mean, "sd": sd,
            "min": float(d.min()) if n else np.nan, "max": float(d.max()) if n else np.nan,
            "ci95": [mean - half, mean + half]}  # fmt: skip


def _sweep(cmp: Comparison) -> None:
    sweeps = [(lab, r.depth_sweep) for lab, r in zip(cmp.labels, cmp.runs, strict=True)]
    sweeps = [(lab, s) for lab, s in sweeps if s is not None and "explained_variance" in s]
    if not sweeps:
        return
    fig, ax = plt.subplots(figsize=(5, 2.6))
    for label, s in sweeps:
        depth = [float(parse_hook(h).layer or 0) for h in s["hook"]]
        ax.plot(depth, s["explained_variance"], marker="o", label=label)
    ax.set_xlabel("block of the target resid_post", fontsize=8)
    ax.set_ylabel("out-of-fold explained variance", fontsize=8)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    cmp.figures["depth_sweep"] = figure_uri(fig)


def _decomposition(cmp: Comparison) -> None:
    frames = []
    for label, run in zip(cmp.labels, cmp.runs, strict=True):
        if run.decomposition is not None:
            frames.append(run.decomposition.assign(run=label))
    if frames:
        df = pd.concat(frames, ignore_index=True)
        cmp.decomposition = df[["run", *(c for c in df.columns if c != "run")]]


def _features(cmp: Comparison) -> None:
    cmp.saes = shared_saes(cmp.runs)
    some = sorted({s for r in cmp.runs for s in r.features} - set(cmp.saes))
    if some:
        cmp.notes.append(f"not in every run, so not compared per feature: {', '.join(some)}")
    for sae in cmp.saes:
        tables = [_scorable(r.features[sae]) for r in cmp.runs]
        for score in FEATURE_SCORES:
            if all(score in t for t in tables):
                cmp.distributions.append(_distribution(cmp.labels, sae, score, tables))
        if all("emergence_layer" in t for t in tables):
            cmp.emergence.append(_distribution(cmp.labels, sae, "emergence_layer", tables))
        if all("class" in t for t in tables):
            for label, t in zip(cmp.labels, tables, strict=True):
                counts = t["class"].value_counts().to_dict()
                cmp.classes.append({"sae": sae, "run": label, "counts": counts})
    if not cmp.saes:
        cmp.notes.append("no SAE was probed in every run: no per-feature comparison")


def _scorable(df: Any) -> Any:
    """The features that have a score: ``probed`` (else ``scorable``) rows when the table says
    which; unscored rows hold NaN scores, which the distributions drop anyway."""
    for col in ("probed", "scorable"):
        if col in df:
            return df[df[col].astype(bool)]
    return df


def _distribution(labels: list[str], sae: str, score: str, tables: list[Any]) -> Distribution:
    values = [t[score].to_numpy(float) for t in tables]
    values = [v[np.isfinite(v)] for v in values]
    rows = []
    for label, v in zip(labels, values, strict=True):
        q = np.quantile(v, [0.25, 0.5, 0.75]) if v.size else [np.nan] * 3
        rows.append({"run": label, "n": int(v.size), "mean": float(v.mean()) if v.size else np.nan,
                     "q25": float(q[0]), "median": float(q[1]), "q75": float(q[2])})  # fmt: skip
    fig, ax = plt.subplots(figsize=(4.2, 2.0))
    both = np.concatenate(values) if any(v.size for v in values) else np.zeros(1)
    bins = np.histogram_bin_edges(both, bins=min(30, max(5, both.size // 10))).tolist()
    for label, v in zip(labels, values, strict=True):
        ax.hist(v, bins=bins, histtype="step", lw=1.4, label=f"{label} (n={v.size})")
    ax.set_title(f"{sae} SAE · {score}", fontsize=8)
    ax.legend(fontsize=6)
    ax.tick_params(labelsize=7)
    return Distribution(sae, score, rows, figure_uri(fig))


# --------------------------------------------------------------------------------------------
# the page


def render_comparison(cmp: Comparison) -> str:
    """The compare report as an HTML string."""
    return (
        environment()
        .get_template("compare.html.j2")
        .render(
            cmp=cmp,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            headline=[] if cmp.headline is None else cmp.headline.to_dict("records"),
            decomposition=[] if cmp.decomposition is None else cmp.decomposition.to_dict("records"),
            report_versions=versions(),
            zip=zip,
        )
    )
