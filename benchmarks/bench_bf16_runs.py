"""bf16 against fp32 on the whole main job: two finished runs, the same config but the model dtype.

Issue 16 asks for the opt-in bf16 compute path's effect on the results (transcoder EV, SAE
EV, probe scores of the quick profile) beside its speed. Run the quick profile twice, fp32
(the CPU default) and bf16, then compare what each wrote::

    crosslayer run --profile quick --out RUN_FP32
    crosslayer run --profile quick --model-dtype bfloat16 --out RUN_BF16
    python -m benchmarks.bench_bf16_runs RUN_FP32 RUN_BF16

Every other setting (seed, tokens, folds, SAE recipe) is equal, and each run is deterministic,
so a difference is the effect of bf16 activations on everything downstream; it is printed
beside the fp32 run's own 95% CI where the run has one (document bootstrap or features), the
scale a difference has to exceed to matter.

The same table compares two runs of one config made by two versions of the code
(``--labels before,after``): what a speed change did to every figure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _rows(r: dict[str, Any]) -> dict[str, tuple[float, list[float] | None]]:
    """``{quantity: (value, ci95 or None)}`` of one run's results.json."""
    out: dict[str, tuple[float, list[float] | None]] = {}
    tc = r["transcoder"]
    out["transcoder (ridge) held-out EV"] = (tc["ridge"]["heldout"]["explained_variance"], None)
    if tc.get("mlp"):
        out["transcoder (MLP) held-out EV"] = (tc["mlp"]["heldout"]["explained_variance"], None)
    for name, s in r["saes"].items():
        out[f"SAE {name}: held-out EV"] = (s["heldout"]["explained_variance"], None)
        out[f"SAE {name}: dead fraction"] = (s["heldout"]["dead_fraction"], None)
    for name, f in r["features"].items():
        out[f"features {name}: scorable"] = (f["n_scorable"], None)
        for metric in ("balanced_accuracy", "auroc", "r2", "token_r2"):
            out[f"features {name}: mean {metric}"] = (f["summary"][metric]["mean"], None)
    for metric in ("balanced_accuracy", "auroc", "r2"):
        c = r["comparison"][metric]
        out[f"headline baseline − residual, {metric}"] = (c["diff_mean"], c["diff_mean_ci95"])
    target = r["hooks"]["target"]
    for p, v in r["decomposition"][target].items():
        if isinstance(v, dict) and "ev" in v:
            out[f"decomposition {p}: EV"] = (v["ev"], v.get("ci95"))
            if "ce_loss_recovered" in v:
                out[f"decomposition {p}: CE loss recovered"] = (v["ce_loss_recovered"], None)
    for k in ("load", "collect", "total"):
        if k in r["timings"]:
            out[f"time: {k} (s)"] = (r["timings"][k], None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fp32", type=Path)
    ap.add_argument("bf16", type=Path)
    ap.add_argument(
        "--labels",
        default="fp32,bf16",
        help="names of the two runs in the table, e.g. before,after for two versions of the code",
    )
    args = ap.parse_args()
    la, lb = args.labels.split(",")
    runs = [json.loads((p / "results.json").read_text()) for p in (args.fp32, args.bf16)]
    a, b = (r["config"] for r in runs)
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    print(f"settings that differ: {', '.join(differ) or 'none'}")
    ra, rb = (_rows(r) for r in runs)
    print(f"| quantity | {la} | {lb} | {lb} − {la} | {la}'s 95% CI |")
    print("|---|---:|---:|---:|---|")
    for key, (va, ci) in ra.items():
        if key not in rb:
            continue
        vb = rb[key][0]
        ci_text = f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
        print(f"| {key} | {va:.4f} | {vb:.4f} | {vb - va:+.4f} | {ci_text} |")


if __name__ == "__main__":
    main()
