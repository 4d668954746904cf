"""Shared fixtures. Tests never touch the network.

Reproducibility comes from crosslayer's own set-up, never from the machine or the shell: the
MKL settings are removed from the environment before anything imports torch, and torch is
imported before crosslayer, so that every in-process test relies on
``crosslayer.numerics.configure`` taking effect after torch is loaded (the harder case), and
every child process (``tests.cli_helpers.ENV``) on it taking effect through the environment.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

for _name in ("MKL_CBWR", "MKL_DYNAMIC"):
    os.environ.pop(_name, None)
import torch  # noqa: E402  (first, on purpose: see above)

import crosslayer  # noqa: E402, F401  (sets MKL's reproducible mode)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's shared data directory (beside the repository, as in CI)."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.fail(f"shared data not found at {path}: clone the repository beside shared/")
    return path


# Tiny-model tests are dominated by per-op overhead, which extra threads only add to, and
# byte-identity tests compare runs that must use one thread count (it is part of the
# provenance): one thread everywhere, fixtures included; real-model tests get every core.
ALL_CORES = torch.get_num_threads()
torch.set_num_threads(1)


@contextmanager
def all_cores() -> Iterator[None]:
    """Every core for the block (for real-model fixtures), then one thread again."""
    torch.set_num_threads(ALL_CORES)
    try:
        yield
    finally:
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _torch_threads(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("real_model") is None:
        yield
    else:
        with all_cores():
            yield


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Gemma 3 saved with ``save_pretrained``: pass it as ``--model DIR``."""
    from crosslayer.model import tiny_model

    path = tmp_path_factory.mktemp("models") / "tiny-gemma3"
    lm = tiny_model()
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path
