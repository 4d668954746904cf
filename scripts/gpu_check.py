"""``make gpu-check``: study A's quick profile on a CUDA GPU in bf16 and fp32, the collection
benchmark against TransformerLens on the GPU, and both runs compared with a CPU fp32 run.

    python scripts/gpu_check.py --out runs/gpu-check                    # everything
    python scripts/gpu_check.py --cpu-results runs/quick/results.json   # reuse a CPU run

Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` (the tables for BENCHMARKS.md). Exit
status: 0 when every compared figure is within its tolerance (:data:`TOLERANCES`, reasons in
docs/gpu.md), 1 when one is not, 2 when there is no CUDA device (a one-line message: this
check needs a GPU; every CUDA code path that can run without one is tested in
tests/test_device.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# figure of results.json (dotted path) -> (largest |GPU fp32 - CPU fp32|, largest |GPU bf16 -
# CPU fp32|). fp32 on the GPU differs from the CPU by summation order only, but the SAEs and
# the probes are trained by seeded stochastic optimisers whose paths diverge from the first
# rounding difference, so their figures move by their own seed-to-seed noise; bf16 rounds
# every activation to 8 mantissa bits (~0.4%) on top. docs/gpu.md gives the reasoning.
TOLERANCES: dict[str, tuple[float, float]] = {
    "transcoder.ridge.heldout.explained_variance": (0.002, 0.02),
    "transcoder.ridge.train.r2_global_mean": (0.002, 0.02),
    "saes.baseline.heldout.explained_variance": (0.02, 0.04),
    "saes.residual.heldout.explained_variance": (0.02, 0.04),
    "comparison.balanced_accuracy.baseline.mean": (0.01, 0.02),
    "comparison.balanced_accuracy.residual.mean": (0.01, 0.02),
    "comparison.balanced_accuracy.diff_mean": (0.015, 0.03),
    "depth_sweep.explained_variance.-1": (0.002, 0.02),
}
RUNS = (("cpu-fp32", "cpu", "float32"), ("cuda-fp32", "cuda", "float32"),
        ("cuda-bf16", "cuda", "bfloat16"))  # fmt: skip


class NoCuda(SystemExit):
    """No CUDA device: the check cannot run here (exit status 2)."""


def require_cuda() -> str:
    """The GPU's name, or :class:`NoCuda` with a one-line reason and what to do."""
    import torch

    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (a CPU-only build)"
        print(
            f"error: gpu-check needs a CUDA GPU, and none is visible (torch {torch.__version__}, "
            f"CUDA build: {built}) — run `make gpu-check` on a machine with an NVIDIA GPU and "
            "a CUDA build of torch",
            file=sys.stderr,
        )
        raise NoCuda(2)
    return str(torch.cuda.get_device_name(0))


def figure(results: dict[str, Any], path: str) -> float | None:
    """The number at a dotted ``path`` of results.json (a list index may be negative)."""
    value: Any = results
    for key in path.split("."):
        if isinstance(value, list):
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            return None
    return None if value is None else float(value)


def compare(
    reference: dict[str, Any], runs: dict[str, dict[str, Any]]
) -> tuple[list[dict[str, Any]], bool]:
    """Each GPU run's figures against the CPU reference; rows, and whether all are within."""
    rows, ok = [], True
    for path, (tol_fp32, tol_bf16) in TOLERANCES.items():
        ref = figure(reference, path)
        for name, results in runs.items():
            got = figure(results, path)
            tol = tol_bf16 if "bf16" in name else tol_fp32
            within = ref is not None and got is not None and abs(got - ref) <= tol
            ok &= within
            diff = None if ref is None or got is None else got - ref
            row = {"figure": path, "run": name, "cpu_fp32": ref, "value": got, "diff": diff,
                   "tolerance": tol, "within": within}  # fmt: skip
            rows.append(row)
    return rows, ok


def run_quick(name: str, device: str, dtype: str, out: Path) -> tuple[dict[str, Any], float]:
    """``crosslayer run --profile quick`` on ``device`` in ``dtype``; its results and wall s."""
    cmd = [sys.executable, "-m", "crosslayer", "run", "--profile", "quick", "--device", device,
           "--model-dtype", dtype, "--out", str(out / name), "--no-progress"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    return json.loads((out / name / "results.json").read_text()), wall


def bench(tokens: int) -> dict[str, Any]:
    """benchmarks/bench_collect.py on the GPU: crosslayer fp32, bf16, compiled; TL; HF."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_collect.py"), "--device", "cuda",
           "--tokens", str(tokens), "--variants", "bf16,batch32,compiled",
           "--repeats", "3"]  # fmt: skip
    done = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)
    return dict(json.loads(done.stdout[done.stdout.index("{") :]))


def markdown(gpu: str, rows: list[dict[str, Any]], walls: dict[str, float], b: dict) -> str:
    fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [f"GPU: {gpu}. Quick profile wall seconds: "
             + ", ".join(f"{k} {v:.0f}" for k, v in walls.items()), "",
             "| figure | run | CPU fp32 | value | diff | tolerance | within |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['figure']} | {r['run']} | {fmt(r['cpu_fp32'])} | {fmt(r['value'])} | "
            f"{fmt(r['diff'])} | {r['tolerance']} | {'yes' if r['within'] else '**no**'} |"
        )
    lines += ["", "Collection on the GPU (bench_collect.py, same run): " + json.dumps(b)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu-check")
    ap.add_argument("--cpu-results", type=Path, help="results.json of a CPU fp32 quick run")
    ap.add_argument("--bench-tokens", type=int, default=65536)
    args = ap.parse_args(argv)
    try:
        gpu = require_cuda()
    except NoCuda as e:
        return int(e.code or 2)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    walls: dict[str, float] = {}
    for name, device, dtype in RUNS:
        if name == "cpu-fp32" and args.cpu_results:
            results[name] = json.loads(args.cpu_results.read_text())
            continue
        results[name], walls[name] = run_quick(name, device, dtype, args.out)
    reference = results.pop("cpu-fp32")
    rows, ok = compare(reference, results)
    b = bench(args.bench_tokens)
    report = {"gpu": gpu, "walls": walls, "comparison": rows, "all_within": ok, "bench": b}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (args.out / "gpu_check.md").write_text(markdown(gpu, rows, walls, b))
    print(markdown(gpu, rows, walls, b))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
