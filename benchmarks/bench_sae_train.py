"""Benchmark: crosslayer.train_sae (sae-lens SAETrainer) vs a plain PyTorch JumpReLU loop.

Same width, architecture, tokens and recipe (train_sae's defaults unless overridden); reports
training throughput (tokens/s) and held-out explained variance / L0 / dead fraction for both,
in one run, with the load average (the machine is shared).

    python benchmarks/bench_sae_train.py --store runs/demo --hook blocks.12.hook_resid_post
    python benchmarks/bench_sae_train.py --synthetic 120000   # no store: sparse synthetic data
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from crosslayer.sae import SAETrainConfig, evaluate_sae, train_sae


def plain_loop(x: torch.Tensor, cfg: SAETrainConfig) -> tuple[dict[str, torch.Tensor], float]:
    """Minimal JumpReLU trainer with train_sae's recipe: same init (decoder rows of norm 0.1,
    encoder = decoder transpose, b_dec = mean activation, threshold), same loss (MSE + Gemma
    Scope 2 quadratic L0 through sae-lens's JumpReLU/Step autograd functions), same Adam
    groups (threshold at lr x jumprelu_threshold_lr_scale), L0 warm-up, linear LR decay,
    grad clipping; no trainer bookkeeping (dead-latent counters, firing statistics)."""
    from sae_lens.saes.jumprelu_sae import JumpReLU, Step

    g = torch.Generator().manual_seed(cfg.seed)
    d, width, bw = x.shape[1], cfg.width, cfg.jumprelu_bandwidth
    target = float(cfg.target_l0 or 0)
    scale = d**0.5 / x[: cfg.batch_size * cfg.n_batches_for_norm_estimate].norm(dim=1).mean()
    w_dec = torch.nn.init.kaiming_uniform_(torch.empty(width, d), generator=g)
    w_dec = (w_dec / w_dec.norm(dim=1, keepdim=True) * 0.1).requires_grad_()
    w_enc = w_dec.detach().T.clone().requires_grad_()
    b_enc = torch.zeros(width, requires_grad=True)
    b_dec = (x[: cfg.batch_size * cfg.n_batches_for_norm_estimate].mean(0) * scale).requires_grad_()
    thr = torch.full((width,), cfg.jumprelu_init_threshold, requires_grad=True)
    params = [w_enc, w_dec, b_enc, b_dec, thr]
    opt = torch.optim.Adam(
        [
            {"params": params[:4]},
            {"params": [thr], "lr": cfg.lr * cfg.jumprelu_threshold_lr_scale},
        ],
        lr=cfg.lr,
    )
    n_batches = x.shape[0] // cfg.batch_size
    steps = n_batches * cfg.epochs
    decay = int(cfg.lr_decay_frac * steps)
    warm = int(cfg.l0_warm_up_frac * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 if s < steps - decay else (steps - s) / max(decay, 1)
    )
    step = 0
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        for xb in x[torch.randperm(x.shape[0], generator=g)].split(cfg.batch_size):
            if xb.shape[0] < cfg.batch_size:
                continue
            with torch.no_grad():
                thr.clamp_(min=0)
            xb = xb * scale
            pre = (xb - b_dec) @ w_enc + b_enc
            f = JumpReLU.apply(pre, thr, bw, False)
            mse = (f @ w_dec + b_dec - xb).pow(2).sum(-1).mean()
            l0 = Step.apply(pre, thr, bw, False).sum(-1)
            coeff = cfg.l0_coefficient * min(1.0, (step + 1) / warm) if warm else 1.0
            loss = mse + coeff * (2 / target * (l0 - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
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
    ap.add_argument(
        "--heldout-docs-from",
        type=int,
        help="hold out documents with id >= N instead of the store's split (long documents: "
        "a 10%% by-document split of a small store can be empty)",
    )
    ap.add_argument("--max-train-tokens", type=int, default=0, help="0: the whole train split")
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--target-l0", type=float, default=64)
    # None: train_sae's default (SAETrainConfig)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--out", default="/tmp/bench_sae")
    a = ap.parse_args()
    if a.store:
        from crosslayer.store import open_store

        store = open_store(a.store)
        split = np.asarray(store.split)
        if a.heldout_docs_from is not None:
            split = (np.asarray(store.doc_ids) >= a.heldout_docs_from).astype(np.uint8)
        x = torch.from_numpy(store.activations(a.hook).to_numpy()).float()
        train, held = x[torch.from_numpy(split == 0)], x[torch.from_numpy(split == 1)]
        if held.shape[0] == 0:
            raise SystemExit("the store has no held-out tokens: pass --heldout-docs-from N")
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
    if a.max_train_tokens:
        train = train[: a.max_train_tokens]
    given = {"batch_size": a.batch_size, "epochs": a.epochs, "lr": a.lr}
    cfg = SAETrainConfig(
        arch="jumprelu",
        width=a.width,
        target_l0=a.target_l0,
        **{k: v for k, v in given.items() if v is not None},
    )
    tokens = train.shape[0] // cfg.batch_size * cfg.batch_size * cfg.epochs
    print(
        f"{train.shape[0]} train tokens, {held.shape[0]} held-out, d {train.shape[1]}, "
        f"{tokens} training tokens, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()}",
        flush=True,
    )
    print(f"config {cfg.model_dump(exclude={'device'})}", flush=True)
    t = time.perf_counter()
    sae = train_sae(train, cfg, a.out, overwrite=True, progress=False, resume=False)
    ours_s = time.perf_counter() - t
    m = evaluate_sae(sae, held)
    print(
        f"train_sae (SAETrainer): {tokens / ours_s:,.0f} tokens/s  {ours_s:.0f} s  "
        f"EV {m['explained_variance']:.3f}  L0 {m['l0']:.1f}  dead {m['dead_fraction']:.3f}  "
        f"load average {os.getloadavg()}",
        flush=True,
    )
    w, plain_s = plain_loop(train, cfg)
    with torch.no_grad():
        for k, v in w.items():
            getattr(sae, k).copy_(v)
    m2 = evaluate_sae(sae, held)
    print(
        f"plain PyTorch loop:     {tokens / plain_s:,.0f} tokens/s  {plain_s:.0f} s  "
        f"EV {m2['explained_variance']:.3f}  L0 {m2['l0']:.1f}  dead {m2['dead_fraction']:.3f}  "
        f"load average {os.getloadavg()}",
        flush=True,
    )
    print(f"speed ratio plain/ours: {ours_s / plain_s:.2f}x")


if __name__ == "__main__":
    main()
