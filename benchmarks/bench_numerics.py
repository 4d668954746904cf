"""The cost of reproducible numerics: MKL's default mode vs crosslayer's (``MKL_CBWR=AUTO``,
``MKL_DYNAMIC=FALSE``), measured in child processes started alternately in one run.

    .venv/bin/python -m benchmarks.bench_numerics [--rounds 3] [--out FILE.md]

Each child measures three workloads at torch's default thread count:
- ``gemm``: a 1024x640 @ 640x2048 float32 matmul (GFLOP/s, best of 20);
- ``small``: ``F.linear`` of 32x64 by 64x64, the tiny-model regime where per-call overhead
  and MKL's thread choice dominate (microseconds per call, median of 2,000);
- ``forward``: Gemma 3 270M up to ``blocks.12.hook_resid_post`` on 8x128 tokens through
  ``LoadedModel.run_with_hooks`` (tokens/s, best of 5; the model from crosslayer's cache).

The peer is the same workload in a child that never imports crosslayer and has neither
variable set: MKL's default, non-reproducible mode. The mode each child really ran in is read
back from MKL and printed beside its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

# A "plain" child runs its first matmul before anything imports crosslayer, so MKL starts in
# the mode its environment gives; MKL_DYNAMIC=TRUE (MKL's default) is spelled out so that
# crosslayer, imported later for the model, leaves it alone.
MODES = {
    "MKL default (torch alone)": {"import": False, "env": {"MKL_DYNAMIC": "TRUE"}},
    "crosslayer: AUTO + MKL_DYNAMIC=FALSE": {"import": True, "env": {}},
    "MKL_CBWR=AUTO only": {"import": False, "env": {"MKL_CBWR": "AUTO", "MKL_DYNAMIC": "TRUE"}},
    "MKL_CBWR=COMPATIBLE": {
        "import": False,
        "env": {"MKL_CBWR": "COMPATIBLE", "MKL_DYNAMIC": "TRUE"},
    },
}


def child(use_crosslayer: bool) -> dict[str, float | str]:
    """One measurement, in this process (run by the parent with a chosen environment)."""
    if use_crosslayer:
        import crosslayer  # noqa: F401  (sets the mode before torch)
    import time
    import warnings

    import torch
    import torch.nn.functional as F

    warnings.simplefilter("ignore")  # a plain child: crosslayer's "could not set" warning
    torch.manual_seed(0)
    a, b = torch.randn(1024, 640), torch.randn(640, 2048)
    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    gemm = 2 * 1024 * 640 * 2048 / best / 1e9

    x, w = torch.randn(32, 64), torch.randn(64, 64)
    times = []
    for _ in range(2000):
        t0 = time.perf_counter()
        F.linear(x, w)
        times.append(time.perf_counter() - t0)
    small = statistics.median(times) * 1e6

    from crosslayer.model import load_model
    from crosslayer.numerics import state

    lm = load_model("gemma-3-270m", device="cpu", dtype="float32")
    ids = torch.randint(1000, 20000, (8, 128))
    best = float("inf")
    with torch.inference_mode():
        for _ in range(5):
            t0 = time.perf_counter()
            lm.run_with_hooks(ids, hooks=["blocks.12.hook_resid_post"])
            best = min(best, time.perf_counter() - t0)
    return {"gemm": gemm, "small": small, "forward": ids.numel() / best, **state()}


def _cpu() -> str:
    """The CPU's model name and whether it has AVX-512 (the case MKL's default failed on)."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return platform.machine()
    text = info.read_text()
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if "model name" in ln), "")
    return f"{name or platform.machine()} ({'AVX-512' if 'avx512f' in text else 'no AVX-512'})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/numerics.md"))
    parser.add_argument("--child", choices=["plain", "crosslayer"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child == "crosslayer")))
        return 0

    base = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "MKL_DYNAMIC")}
    runs: dict[str, list[dict]] = {name: [] for name in MODES}
    for _ in range(args.rounds):  # alternate the modes, so load changes hit each alike
        for name, mode in MODES.items():
            kind = "crosslayer" if mode["import"] else "plain"
            cmd = [sys.executable, "-m", "benchmarks.bench_numerics", "--child", kind]
            out = subprocess.run(
                cmd, env={**base, **mode["env"]}, capture_output=True, text=True, check=True
            )
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))

    ref = runs["MKL default (torch alone)"]
    lines = [
        "# Reproducible numerics: the cost of MKL's CNR mode",
        "",
        f"Command: `.venv/bin/python -m benchmarks.bench_numerics --rounds {args.rounds}`",
        "",
        f"Machine: {_cpu()}, {os.cpu_count()} CPU cores, "
        f"1-min load average at the end {os.getloadavg()[0]:.1f} (above the core count means "
        "other jobs shared the CPU). Medians over the rounds; the modes alternate within each "
        "round. Ratios are against MKL's default mode.",
        "",
        "| mode | MKL mode read back | threads | gemm GFLOP/s | small linear µs | "
        "Gemma 3 270M forward to block 12, tok/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, rs in runs.items():
        g, s, f = (statistics.median(r[k] for r in rs) for k in ("gemm", "small", "forward"))
        g0, s0, f0 = (statistics.median(r[k] for r in ref) for k in ("gemm", "small", "forward"))
        mode = f"{rs[0]['mkl_cbwr']}, dynamic {rs[0]['mkl_dynamic']}"
        lines.append(
            f"| {name} | {mode} | {rs[0]['threads']} | {g:.0f} ({g / g0:.2f}×) | "
            f"{s:.1f} ({s / s0:.2f}×) | {f:,.0f} ({f / f0:.2f}×) |"
        )
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
