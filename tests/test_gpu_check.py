"""``make gpu-check`` (scripts/gpu_check.py): without CUDA it must stop at once with a clear
one-line message and exit status 2; its comparison logic is checked on synthetic results.

The GPU runs themselves need a GPU (docs/gpu.md); the CUDA code paths that can run on a CPU
(device and dtype selection, pinned and non-blocking copies guarded) are in test_device.py.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_it_exits_2_with_one_clear_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: gpu-check needs a CUDA GPU")
    assert "none is visible" in lines[0] and "make gpu-check" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing started


def test_the_make_target_runs_the_script() -> None:
    done = subprocess.run(["make", "-n", "gpu-check", "VENV=/nonexistent"], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    assert "scripts/gpu_check.py" in done.stdout


def _results(ev: float, sae: float, acc: float, sweep_last: float) -> dict:
    return {
        "transcoder": {"ridge": {"heldout": {"explained_variance": ev},
                                 "train": {"r2_global_mean": 0.8}}},
        "saes": {"baseline": {"heldout": {"explained_variance": sae}},
                 "residual": {"heldout": {"explained_variance": sae - 0.1}}},
        "comparison": {"balanced_accuracy": {"baseline": {"mean": acc},
                                             "residual": {"mean": acc - 0.15},
                                             "diff_mean": 0.15}},
        "depth_sweep": {"explained_variance": [0.9, 0.5, sweep_last]},
    }  # fmt: skip


def test_figures_are_compared_with_the_fp32_or_bf16_tolerance() -> None:
    gc = _module()
    ref = _results(0.160, 0.70, 0.75, 0.16)
    assert gc.figure(ref, "depth_sweep.explained_variance.-1") == 0.16
    assert gc.figure(ref, "saes.pretrained.heldout.explained_variance") is None
    # within: fp32 off by 0.001 in EV (tolerance 0.002), bf16 off by 0.015 (0.02)
    rows, ok = gc.compare(ref, {"cuda-fp32": _results(0.161, 0.71, 0.755, 0.161),
                                "cuda-bf16": _results(0.175, 0.73, 0.765, 0.17)})  # fmt: skip
    assert ok and len(rows) == 2 * len(gc.TOLERANCES)
    ev = {r["run"]: r for r in rows if r["figure"].startswith("transcoder.ridge.heldout")}
    assert ev["cuda-fp32"]["diff"] == pytest.approx(0.001)
    assert ev["cuda-bf16"]["tolerance"] == gc.TOLERANCES[ev["cuda-bf16"]["figure"]][1]
    # the same 0.015 in fp32 is outside; a missing figure is never within
    rows, ok = gc.compare(ref, {"cuda-fp32": _results(0.175, 0.70, 0.75, 0.16)})
    assert not ok
    bad = [r["figure"] for r in rows if not r["within"]]
    assert bad == ["transcoder.ridge.heldout.explained_variance"]
    missing = _results(0.16, 0.70, 0.75, 0.16)
    del missing["depth_sweep"]
    assert not gc.compare(ref, {"cuda-fp32": missing})[1]
