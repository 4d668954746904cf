"""Micro-benchmarks behind four choices of issue 14, each against its alternative, one process.

    python -m benchmarks.bench_kernels

1. Adam over the default profile's SAE parameters (W_enc, W_dec 640 x 2,048, b_enc, b_dec):
   torch's per-tensor loop (what sae-lens builds), ``foreach`` and ``fused`` (train_sae's).
2. The splice's row product ``(p * log q).sum(1)`` at Gemma's vocabulary (512 x 262,144):
   product and sum, one batched product over all columns, and runs of 128 columns summed in
   float64 (``decomposition.splice._row_dot``), each with its error against float64.
3. numpy's OpenBLAS against torch for a product followed by torch work (``index_add_``), the
   contention between the two libraries' thread pools.
4. The AUROC of one row of 28,632 scores (4% positives): the sort of every score
   (``crossfit.ranks.auroc_rows``) against a search of every score among the sorted positives.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

import crosslayer  # noqa: F401  (first: sets MKL's reproducible mode before torch computes)


def _ms(f: Callable[[], object], n: int) -> float:
    f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1e3


def adam() -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(640, 2048), (2048, 640), (2048,), (640,)]
    for kw in ({}, {"foreach": True}, {"fused": True}):
        ps = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)
        opt = torch.optim.Adam(ps, lr=1e-3, **kw)
        print(f"Adam {kw or 'per-tensor loop'}: {_ms(opt.step, 30):.1f} ms a step")


def row_dot() -> None:
    from crosslayer.decomposition.splice import _row_dot

    g = torch.Generator().manual_seed(0)
    n, v = 512, 262_144
    z = torch.randn(n, v, generator=g) * 4
    lq = torch.log_softmax(z, 1)
    p = torch.softmax(torch.randn(n, v, generator=g) * 4 + z * 0.5, 1)
    ref = (p.double() * lq.double()).sum(1)
    ways = {
        "product and sum": lambda: (p * lq).sum(1),
        "one batched product": lambda: torch.bmm(p[:, None, :], lq[:, :, None]).flatten(),
        "runs of 128, float64 sum (_row_dot)": lambda: _row_dot(p, lq),
    }
    for name, f in ways.items():
        err = float((f().double() - ref).abs().max())
        print(f"row product, {name}: {_ms(f, 5):.0f} ms, max error {err:.1e}")


def contention() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((4096, 1152), dtype=np.float32)
    b = rng.random((1152, 640), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    acc = torch.zeros(100, 640, dtype=torch.float64)
    idx = torch.randint(0, 100, (4096,))

    def step(use_torch: bool, mix: bool) -> None:
        p = ta @ tb if use_torch else torch.from_numpy(a @ b)
        if mix:
            acc.index_add_(0, idx, p.double())

    for use_torch in (False, True):
        for mix in (False, True):
            name = f"{'torch' if use_torch else 'numpy'} product{' + index_add_' if mix else ''}"
            print(f"{name}: {_ms(lambda t=use_torch, m=mix: step(t, m), 20):.1f} ms")


def auroc_search() -> None:
    from crosslayer.crossfit.ranks import auroc_rows

    rng = np.random.default_rng(0)
    c, n = 64, 28_632
    z = rng.standard_normal((c, n)).astype(np.float32)
    y = rng.random((c, n)) < 0.04

    def search() -> np.ndarray:
        out = np.empty(c)
        for j in range(c):
            v, neg = np.sort(z[j][y[j]]), z[j][~y[j]]
            lo, hi = np.searchsorted(v, neg, "left"), np.searchsorted(v, neg, "right")
            out[j] = ((v.size * neg.size - hi.sum()) + 0.5 * (hi - lo).sum()) / (v.size * neg.size)
        return out

    diff = float(np.abs(auroc_rows(z, y, threads=1) - search()).max())
    sort_ms = _ms(lambda: auroc_rows(z, y, threads=1), 3) / c
    print(f"AUROC per row: sort {sort_ms:.2f} ms, search {_ms(search, 3) / c:.2f} ms ({diff:.0e})")


if __name__ == "__main__":
    print(f"torch threads {torch.get_num_threads()}")
    adam()
    row_dot()
    contention()
    auroc_search()
