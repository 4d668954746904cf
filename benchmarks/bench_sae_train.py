"""Benchmark: crosslayer.train_sae (sae-lens SAETrainer) vs a plain PyTorch JumpReLU loop.

Same width, architecture, tokens, batch size and learning rate; reports training throughput
(tokens/s) and held-out explained variance / L0 for both, in one run.

    python benchmarks/bench_sae_train.py --store runs/demo --hook blocks.12.hook_resid_post
    python benchmarks/bench_sae_train.py --synthetic 120000   # no store: sparse synthetic data
"""

from __future__ import annotations

import argparse
import time

import torch

from crosslayer.sae import evaluate_sae, train_sae


def plain_loop(
    x: torch.Tensor, width: int, target_l0: float, batch: int, epochs: int, lr: float, seed: int
) -> tuple[dict[str, torch.Tensor], float]:
    """Minimal JumpReLU trainer: same loss (MSE + Gemma Scope 2 quadratic L0) and STE
    (sae-lens's JumpReLU/Step autograd functions), no scheduler/trainer bookkeeping."""
    from sae_lens.saes.jumprelu_sae import JumpReLU, Step

    g = torch.Generator().manual_seed(seed)
    d = x.shape[1]
    scale = d**0.5 / x[:8192].norm(dim=1).mean()
    w_dec = torch.randn(width, d, generator=g)
    w_dec = (w_dec / w_dec.norm(dim=1, keepdim=True) * 0.1).requires_grad_()
    w_enc = w_dec.detach().T.clone().requires_grad_()
    b_enc = torch.zeros(width, requires_grad=True)
    b_dec = torch.zeros(d, requires_grad=True)
    thr = torch.full((width,), 0.1, requires_grad=True)
    opt = torch.optim.Adam([w_enc, w_dec, b_enc, b_dec, thr], lr=lr)
    start = time.perf_counter()
    for _ in range(epochs):
        for xb in x[torch.randperm(x.shape[0], generator=g)].split(batch):
            if xb.shape[0] < batch:
                continue
            xb = xb * scale
            pre = (xb - b_dec) @ w_enc + b_enc
            f = JumpReLU.apply(pre, thr, 0.05, True)
            mse = (f @ w_dec + b_dec - xb).pow(2).sum(-1).mean()
            l0 = Step.apply(pre, thr, 0.05, True).sum(-1)
            loss = mse + (2 / target_l0 * (l0 - target_l0) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([w_enc, w_dec, b_enc, b_dec, thr], 1.0)
            opt.step()
            with torch.no_grad():
                thr.clamp_(min=0)
    seconds = time.perf_counter() - start
    w = {
        "W_enc": w_enc.detach() * scale,
        "W_dec": w_dec.detach() / scale,
        "b_enc": b_enc.detach(),
        "b_dec": b_dec.detach() / scale,
        "threshold": thr.detach(),
    }
    return w, seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store")
    ap.add_argument("--hook", default="blocks.12.hook_resid_post")
    ap.add_argument("--synthetic", type=int, default=0)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--target-l0", type=float, default=64)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--out", default="/tmp/bench_sae")
    a = ap.parse_args()
    if a.store:
        from crosslayer.store import open_store

        store = open_store(a.store)
        train = torch.from_numpy(store.activations(a.hook).to_numpy(split="train")).float()
        held = torch.from_numpy(store.activations(a.hook).to_numpy(split="heldout")).float()
    else:
        g = torch.Generator().manual_seed(0)
        dirs = torch.randn(8192, 640, generator=g)
        dirs /= dirs.norm(dim=1, keepdim=True)
        n = a.synthetic + 10000
        codes = torch.zeros(n, 8192)
        idx = torch.randint(0, 8192, (n, 60), generator=g)
        codes.scatter_(1, idx, torch.rand(n, 60, generator=g) * 4)
        x = codes @ dirs + 0.1 * torch.randn(n, 640, generator=g)
        train, held = x[: a.synthetic], x[a.synthetic :]
    cfg = {
        "width": a.width,
        "target_l0": a.target_l0,
        "batch_size": a.batch_size,
        "epochs": a.epochs,
        "lr": a.lr,
    }
    tokens = train.shape[0] // a.batch_size * a.batch_size * a.epochs
    t = time.perf_counter()
    sae = train_sae(train, cfg, a.out, overwrite=True, progress=False)
    ours_s = time.perf_counter() - t
    m = evaluate_sae(sae, held)
    print(
        f"train_sae (SAETrainer): {tokens / ours_s:,.0f} tokens/s  {ours_s:.0f} s  "
        f"EV {m['explained_variance']:.3f}  L0 {m['l0']:.1f}  dead {m['dead_fraction']:.3f}"
    )
    w, plain_s = plain_loop(train, a.width, a.target_l0, a.batch_size, a.epochs, a.lr, 0)
    with torch.no_grad():
        for k, v in w.items():
            getattr(sae, k).copy_(v)
    m2 = evaluate_sae(sae, held)
    print(
        f"plain PyTorch loop:     {tokens / plain_s:,.0f} tokens/s  {plain_s:.0f} s  "
        f"EV {m2['explained_variance']:.3f}  L0 {m2['l0']:.1f}  dead {m2['dead_fraction']:.3f}"
    )
    print(
        f"speed ratio plain/ours: {ours_s / plain_s:.2f}x  ({train.shape[0]} train tokens, "
        f"{held.shape[0]} held-out, d {train.shape[1]}, config {cfg})"
    )


if __name__ == "__main__":
    main()
