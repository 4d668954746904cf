"""Stage 9: ``results.json`` (docs/results_schema.md) and the summary printed at the end."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.table import Table

from crosslayer.experiments.study_a.run import nan_array
from crosslayer.metrics import format_p

SCHEMA = "crosslayer.study_a"
SCHEMA_VERSION = 3  # 3: cross-fitted features (+ Parquet tables), decomposition, emergence,
# dictionaries (placebo, seeds), depth sweep out of fold; 2: no absolute paths

# The study's own figures (Gemma 2 2B, embeddings → hidden_states[20], Gemma Scope layer 20),
# with the protocol that produced each, so that every table can show them beside ours.
STUDY_REFERENCE: dict[str, Any] = {
    "model": "google/gemma-2-2b",
    "source": "hidden_states[0] (= hook_embed)",
    "target": "hidden_states[20] (= blocks.19.hook_resid_post; its SAE reads blocks.20)",
    "transcoder_r2": 0.5025,
    "transcoder_protocol": "nn.Linear, Adam lr 1e-4, 20 epochs, batch 256, MSE; R² = 1 - SS_res "
    "/ SS_tot around ONE global mean, on the training data (no held-out split); ~15k samples "
    "incl. BOS/pad and duplicates",
    "baseline_accuracy": 0.7555,
    "residual_accuracy": 0.7423,
    "probe_protocol": "active = value > 0.1; subsample to balance classes; 80/20 split; plain "
    "accuracy; baseline: 30 latents, residual: 100 latents; both SAEs ReLU+L1 2304→16384 "
    "trained on 10,240 vectors",
}


def _fmt(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def summary_table(results: dict[str, Any]) -> Any:
    """A rich table of the headline numbers, ours beside the study's (with each protocol)."""
    ref = results["study_reference"]
    tc = results["transcoder"]
    h = results["hooks"]
    table = Table(title=f"Study A: {h['source']} → {h['target']} on {results['model']['spec']}")
    table.add_column("measure")
    table.add_column("ours", justify="right")
    table.add_column("study (Gemma 2 2B)", justify="right")
    table.add_row(
        "transcoder R², held-out, per-dim means (ridge)",
        _fmt(tc["ridge"]["heldout"]["explained_variance"]),
        "not measured",
    )
    table.add_row(
        "transcoder R², train, one global mean (ridge)",
        _fmt(tc["ridge"]["train"]["r2_global_mean"]),
        f"{ref['transcoder_r2']} (Adam)",
    )
    if "study_recipe" in tc:
        table.add_row(
            "study's Adam recipe: held-out EV / train global-mean R²",
            f"{_fmt(tc['study_recipe']['heldout']['explained_variance'])} / "
            f"{_fmt(tc['study_recipe']['train']['r2_global_mean'])}",
            f"– / {ref['transcoder_r2']}",
        )
    if "mlp" in tc:
        table.add_row(
            "MLP transcoder EV, held-out (below E[late | token], not a ceiling)",
            _fmt(tc["mlp"]["heldout"]["explained_variance"]),
            "–",
        )
    cmp = results["comparison"]
    metric = cmp["headline_metric"]
    for name, key in (("baseline", "baseline_accuracy"), ("residual", "residual_accuracy")):
        feats = results["features"][name]
        stats = cmp.get(metric, {}).get(name, {})
        table.add_row(
            f"{name} SAE: mean out-of-fold {metric} ({feats['n_probed']} scorable of "
            f"{feats['n_alive']} alive)",
            _fmt(stats.get("mean")),
            f"{ref[key]} (accuracy, study protocol)",
        )
    c = cmp.get(metric, {})
    if "diff_mean" in c:
        lo, hi = c["diff_mean_ci95"]
        table.add_row(
            "baseline − residual [95% CI], Mann-Whitney p",
            f"{c['diff_mean']:+.3f} [{lo:+.3f}, {hi:+.3f}], "
            f"p {format_p(c['mannwhitney_p'], relation=True)}",
            f"{ref['baseline_accuracy'] - ref['residual_accuracy']:+.4f}, no test",
        )
    s = cmp.get("study_protocol_accuracy", {})
    if "diff_mean" in s:
        table.add_row(
            "study protocol accuracy here: baseline / residual",
            f"{s['baseline']['mean']:.3f} / {s['residual']['mean']:.3f}",
            f"{ref['baseline_accuracy']} / {ref['residual_accuracy']}",
        )
    if "pretrained" in results["features"]:
        v = nan_array(results["features"]["pretrained"]["features"][metric])
        table.add_row(
            f"pretrained SAE (--sae): mean {metric}",
            _fmt(float(np.nanmean(v)) if np.isfinite(v).any() else None),
            "–",
        )
    depth = results.get("depth_sweep")
    if depth:
        ev = nan_array(depth["explained_variance"])
        best = int(np.nanargmax(ev)) if np.isfinite(ev).any() else None
        if best is not None:
            table.add_row(
                "depth sweep: best out-of-fold EV",
                f"{ev[best]:.3f} at {depth['target_hooks'][best]}",
                "–",
            )
    return table
