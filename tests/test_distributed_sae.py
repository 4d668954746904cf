"""SAE training under ``torchrun`` (data parallel, gloo, 2 CPU processes) against a single
process: the same SAE up to float32 summation order, on every rank, also after a resume, and
through ``crosslayer train-sae``.

Tolerance: the two runs sum the same per-row gradients in a different order (two halves of
the batch, then an all_reduce, against one sum over the batch), about 1e-7 relative per step
in float32; Adam carries that through the run. Measured: at most 6e-7 of each tensor's
largest entry after 48 steps. The tests allow 1e-5, while a wrong split or a missing
average changes the weights by 1e-2 or more.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from crosslayer.cli import main
from crosslayer.sae import train_sae
from tests import _train_sae as script
from tests.cli_helpers import ENV, collect_args

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
REL_TOL = 1e-5


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TORCHRUN, *args], cwd=REPO, env=ENV, text=True, capture_output=True, timeout=300
    )


def assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        scale = float(w.abs().max())
        torch.testing.assert_close(got[k], w, rtol=0, atol=REL_TOL * scale, msg=k)


def _weights(sae) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in sae.state_dict().items()}


@pytest.fixture(scope="module")
def parallel(tmp_path_factory) -> Path:
    """tests/_train_sae.py run by two processes under torchrun (one launch, three SAEs)."""
    out = tmp_path_factory.mktemp("dist_sae")
    run = _torchrun("-m", "tests._train_sae", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    # the injected crash stopped both ranks at the first checkpoint (48 steps / 4 = 12)
    assert "rank 0 stopped: Crash, at 12" in run.stdout, run.stdout
    assert "rank 1 stopped: CrosslayerError, at 12" in run.stdout, run.stdout
    return out


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_two_processes_train_the_single_process_sae(parallel, tmp_path, arch):
    single = train_sae(script.sparse_data(), script.CONFIGS[arch], tmp_path / arch, progress=False)
    rank0 = load_file(parallel / f"{arch}.rank0.safetensors")
    rank1 = load_file(parallel / f"{arch}.rank1.safetensors")
    assert_close(rank0, _weights(single))
    for k in rank0:  # both processes return the same SAE, bit for bit
        assert torch.equal(rank0[k], rank1[k]), k
    # the firing counters were summed over ranks: same final L0, dead latents and token count
    got = json.loads((parallel / arch / "training.json").read_text())
    want = json.loads((tmp_path / arch / "training.json").read_text())
    assert got["processes"] == 2 and want["processes"] == 1
    assert got["tokens"] == want["tokens"] == 48 * 256
    assert got["final"]["dead"] == want["final"]["dead"]
    assert got["final"]["l0"] == pytest.approx(want["final"]["l0"], rel=1e-6)
    if arch == "topk":  # dead latents existed, so the auxiliary loss was exercised
        assert want["final"]["dead"] > 0
        assert got["final"]["l0"] == pytest.approx(5.0)
    sparsity = load_file(parallel / arch / "sparsity.safetensors")["sparsity"]
    ref = load_file(tmp_path / arch / "sparsity.safetensors")["sparsity"]
    torch.testing.assert_close(sparsity, ref, rtol=0, atol=1e-6)


def test_resumed_distributed_run_equals_the_uninterrupted_one(parallel):
    resumed = load_file(parallel / "resumed.rank0.safetensors")
    full = load_file(parallel / "jumprelu.rank0.safetensors")
    for k in full:  # same world size, same order of operations: bit for bit
        assert torch.equal(resumed[k], full[k]), k
        assert torch.equal(resumed[k], load_file(parallel / "resumed.rank1.safetensors")[k])
    assert not (parallel / "resumed.ckpt").exists()


def test_train_sae_cli_under_torchrun(tiny_dir, tmp_path):
    store = tmp_path / "store"
    assert main(collect_args(tiny_dir, store, 1000)) == 0

    def args(out: Path) -> list[str]:
        return [
            "train-sae", "--store", str(store), "--hook", "blocks.2.hook_resid_post",
            "--out", str(out), "--width", "32", "--target-l0", "4", "--epochs", "2",
            "--batch-size", "128", "--device", "cpu", "--no-progress",
        ]  # fmt: skip

    assert main(args(tmp_path / "one")) == 0
    run = _torchrun("-m", "crosslayer", *args(tmp_path / "two"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("saved ") == 1, run.stdout  # rank 0 reports
    assert_close(
        load_file(tmp_path / "two/sae_weights.safetensors"),
        load_file(tmp_path / "one/sae_weights.safetensors"),
    )
    two = json.loads((tmp_path / "two/training.json").read_text())
    one = json.loads((tmp_path / "one/training.json").read_text())
    assert two["processes"] == 2 and two["steps"] == one["steps"] > 5
