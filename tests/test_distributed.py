"""``torchrun`` data parallelism on CPU (gloo, 2 processes) against a single process:
collection gives the same store, byte for byte; a transcoder fitted from all-reduced
sufficient statistics gives the same coefficients."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crosslayer import numerics
from crosslayer.cli import main
from crosslayer.store import open_store
from crosslayer.transcoder import AffineTranscoder
from tests.cli_helpers import ENV, assert_same_store, collect_args, store_files

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
N = 2700  # 6 shards of 500 (the last trimmed to 200): ranks take 3 each
SPLIT = ("--heldout-frac", "0.5")  # both splits present: held-out rows choose the alpha


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TORCHRUN, *args], cwd=REPO, env=ENV, text=True, capture_output=True, timeout=300
    )


@pytest.fixture(scope="module")
def stores(tiny_dir, tmp_path_factory) -> tuple[Path, Path]:
    """The same collection run by one process and by two under torchrun."""
    root = tmp_path_factory.mktemp("dist")
    single, parallel = root / "single", root / "parallel"
    assert main(collect_args(tiny_dir, single, N, *SPLIT)) == 0
    run = _torchrun("-m", "crosslayer", *collect_args(tiny_dir, parallel, N, *SPLIT))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("stored 2,700 tokens") == 1, run.stdout  # rank 0 reports
    return single, parallel


def test_torchrun_collection_equals_single_process(stores):
    single, parallel = stores
    # every shard file and the manifest itself: no field differs (see docs/store_format.md)
    assert len(store_files(parallel)) == 1 + 6 * 7
    assert_same_store(parallel, single)
    # the workers were started without MKL's settings: crosslayer's own set-up made them so
    assert "MKL_CBWR" not in ENV
    mode = "no MKL" if numerics.state()["mkl_cbwr"] == "no MKL" else "AUTO"
    assert open_store(parallel).manifest["versions"]["mkl_cbwr"] == mode
    store = open_store(parallel)
    assert store.n_tokens == N and store.manifest["n_shards"] == 6
    assert main(["verify", str(parallel)]) == 0


def test_torchrun_transcoder_statistics_equal_single_process(stores, tmp_path):
    single, _ = stores
    out = tmp_path / "fit.npz"
    src, tgt = "hook_embed", "blocks.2.hook_resid_post"
    run = _torchrun("-m", "tests._fit_transcoder", str(single), src, tgt, str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    got = np.load(out)
    assert int(got["world"]) == 2

    # single process, the ordinary in-memory path: fit(X, Y, X_val, Y_val)
    store = open_store(single)
    assert 0 < store.split.mean() < 1
    x, y = store.activations(src), store.activations(tgt)
    ref = AffineTranscoder(solver="ridge").fit(
        x.to_numpy("train", np.float64), y.to_numpy("train", np.float64),
        x.to_numpy("heldout", np.float64), y.to_numpy("heldout", np.float64),
    )  # fmt: skip
    assert float(got["alpha"]) == ref.alpha_
    scale = np.abs(ref.coef_).max()
    np.testing.assert_allclose(got["coef"], ref.coef_, rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(got["intercept"], ref.intercept_, rtol=1e-8, atol=1e-8 * scale)
