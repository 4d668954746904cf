"""Run by tests/test_distributed_sae.py, under torchrun or as one process: small SAEs trained
on a seeded random tensor.

``python -m tests._train_sae OUT`` (from the repository root) trains, in ``OUT/``:

- ``jumprelu`` and ``topk``: the two architectures, uninterrupted;
- ``resumed``: JumpReLU again, made to fail right after its first checkpoint is written
  (fault injected into the checkpoint writer: rank 0 raises, the other ranks are told so by
  the collective error check), then rerun with the same arguments, so it resumes.

Every rank saves the SAE that ``train_sae`` returned to it as ``NAME.rankR.safetensors``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from crosslayer import distributed
from crosslayer.errors import CrosslayerError
from crosslayer.sae import train, train_sae
from tests.test_sae_train import sparse_data

# 4096 rows / 256 = 16 steps an epoch, 48 steps; checkpoints every 12 steps
BASE: dict[str, Any] = {
    "width": 64,
    "batch_size": 256,
    "epochs": 3,
    "n_checkpoints": 3,
    "shuffle_buffer": 2048,
    "dead_feature_window": 8,  # some latents die, so TopK's auxiliary loss takes part
    "device": "cpu",
}
CONFIGS: dict[str, dict[str, Any]] = {
    "jumprelu": {**BASE, "arch": "jumprelu", "target_l0": 6},
    "topk": {**BASE, "arch": "topk", "target_l0": 5},
}


class Crash(Exception):
    """The injected failure."""


def _save(sae: Any, out: Path, name: str) -> None:
    state = {k: v.detach().contiguous() for k, v in sae.state_dict().items()}
    save_file(state, out / f"{name}.rank{distributed.rank()}.safetensors")


def _crash_after_first_checkpoint(out: Path, x: torch.Tensor) -> None:
    write = train._checkpoint

    def write_then_crash(*args: Any) -> None:
        write(*args)
        raise Crash("injected crash after the first checkpoint")

    train._checkpoint = write_then_crash  # type: ignore[assignment]
    try:
        train_sae(x, CONFIGS["jumprelu"], out / "resumed", progress=False)
    except (Crash, CrosslayerError) as e:  # rank 0: the crash; the others: "rank 0 failed"
        position = json.loads((out / "resumed.ckpt/latest/position.json").read_text())
        print(f"rank {distributed.rank()} stopped: {type(e).__name__}, at {position['batches']}")
    else:
        raise AssertionError("the injected crash did not happen")
    finally:
        train._checkpoint = write  # type: ignore[assignment]


def main(out_dir: str) -> None:
    out = Path(out_dir)
    x = sparse_data()
    with distributed.session():
        for name, cfg in CONFIGS.items():
            _save(train_sae(x, cfg, out / name, progress=False), out, name)
        _crash_after_first_checkpoint(out, x)
        _save(train_sae(x, CONFIGS["jumprelu"], out / "resumed", progress=False), out, "resumed")


if __name__ == "__main__":
    main(sys.argv[1])
