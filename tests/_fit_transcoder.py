"""Run under torchrun by tests/test_distributed.py: a ridge transcoder fitted data-parallel.

``python -m tests._fit_transcoder STORE SOURCE TARGET OUT.npz`` (from the repository root):
each rank streams its own shards, the statistics are all-reduced, and rank 0 saves the
fitted ``coef_``, ``intercept_`` and ``alpha_`` with the number of ranks.
"""

from __future__ import annotations

import sys

import numpy as np

from crosslayer import distributed
from crosslayer.transcoder import fit_transcoder_on_store


def main(store: str, source: str, target: str, out: str) -> None:
    with distributed.session():
        tc = fit_transcoder_on_store(store, source, target, batch_size=300)
        if distributed.rank() == 0:
            np.savez(out, coef=tc.coef_, intercept=tc.intercept_, alpha=tc.alpha_,
                     world=distributed.world_size())  # fmt: skip


if __name__ == "__main__":
    main(*sys.argv[1:5])
