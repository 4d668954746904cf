"""Shared fixtures. Tests never touch the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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


@pytest.fixture(autouse=True)
def _torch_threads(request: pytest.FixtureRequest):
    """Tiny-model tests are dominated by per-op overhead, which extra threads only add to;
    the real-model tests get every core."""
    import torch

    before = torch.get_num_threads()
    real = request.node.get_closest_marker("real_model") is not None
    torch.set_num_threads(before if real else 1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Gemma 3 saved with ``save_pretrained``: pass it as ``--model DIR``."""
    from crosslayer.model import tiny_model

    path = tmp_path_factory.mktemp("models") / "tiny-gemma3"
    lm = tiny_model()
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path
