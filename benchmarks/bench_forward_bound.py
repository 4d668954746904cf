"""How fast can the truncated fp32 forward be? The GEMM floor against TransformerLens.

    python -m benchmarks.bench_forward_bound --repeats 15

Issue 16 asks collection to be 1.4x TransformerLens in fp32. This benchmark measures, in
one run, one batch (8 contexts of 128 tokens of builtin:wiki, blocks 0..mid of Gemma 3
270M, best of ``--repeats``):

- ``hf``: crosslayer's forward (the HF model, stopped after block ``mid`` by a hook);
- ``transformer_lens``: ``run_with_cache(names_filter=..., stop_at_layer=mid + 1)``;
- ``gemm_floor``: only the matrix products of those blocks (the 7 projections per block
  with the real weights, and attention's two batched products), nothing else: no norm,
  activation, softmax, rotary, copy or Python. No forward pass of these weights in fp32
  can be faster on this machine, whatever is fused;
- ``written_out``: the same blocks as ``crosslayer.model.compiled.Gemma3Blocks`` writes
  them (``F.rms_norm``, SDPA with grouped keys, one-pass rotary), eager;
- ``compiled``: ``CompiledForward``, i.e. those blocks under ``torch.compile`` with
  inductor's weight freezing (its compile time is reported, not counted);

and, in the same run, ``collect`` end to end on ``--tokens`` tokens, with and without
``compile=True``, against TransformerLens on the same contexts (best of 2 rounds each).
The difference between a collection's time and its forward's is the collection's own cost
(tokenising, masking, copying, checking, writing, hashing); the summary says what
per-batch forward time 1.4x TransformerLens end to end would need.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.bench_collect import (
    bench_ours,
    bench_transformer_lens,
    contexts,
    flops_per_token,
    matmul_peak,
    transformer_lens,
)
from crosslayer.model import load_model
from crosslayer.model.compiled import CompiledForward, Gemma3Blocks
from crosslayer.model.hooks import parse_hook


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def gemm_floor(hf: nn.Module, mid: int, b: int, t: int) -> Callable[[], None]:
    """Only the matrix products of blocks 0..mid on inputs of the right shapes."""
    cfg = hf.config.get_text_config()
    heads, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    g = heads // kv
    x = torch.randn(b * t, cfg.hidden_size)
    inner = torch.randn(b * t, heads * hd)
    act = torch.randn(b * t, cfg.intermediate_size)
    q = torch.randn(b * kv, g * t, hd)  # a kv head's query heads stacked along the rows
    k = torch.randn(b * kv, hd, t)
    p = torch.randn(b * kv, g * t, t)
    v = torch.randn(b * kv, t, hd)
    layers = hf.model.layers[: mid + 1]

    def run() -> None:
        for layer in layers:
            a, m = layer.self_attn, layer.mlp
            for proj in (a.q_proj, a.k_proj, a.v_proj):
                F.linear(x, proj.weight)
            torch.bmm(q, k)
            torch.bmm(p, v)
            F.linear(inner, a.o_proj.weight)
            F.linear(x, m.gate_proj.weight)
            F.linear(x, m.up_proj.weight)
            F.linear(act, m.down_proj.weight)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192, help="end-to-end collect and TL")
    ap.add_argument("--mid", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=15, help="per-batch timings: best of")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    lm = load_model("gemma-3-270m", device="cpu", dtype="float32")
    hf = lm.model
    ctxs = contexts(lm, args.tokens, 128)
    ids = np.stack([c.tokens for c in ctxs[: args.batch_size]]).astype(np.int64)
    b, t = ids.shape
    hooks = ["hook_embed", f"blocks.{args.mid}.hook_resid_post"]
    tl = transformer_lens(lm)
    peak = matmul_peak()
    with torch.inference_mode():
        ref = lm.run_with_hooks(torch.from_numpy(ids), hooks=hooks)[hooks[1]]
        written = Gemma3Blocks(lm, [parse_hook(h) for h in hooks]).eval()
        written_err = float((written(torch.from_numpy(ids))[1] - ref).abs().max() / ref.abs().max())
        start = time.perf_counter()
        compiled = CompiledForward(lm, hooks, batch_size=b, context_len=t)
        got = compiled(ids)[hooks[1]]  # compiles, then checks itself against the HF forward
        compile_s = time.perf_counter() - start
        assert compiled.fallback is None, compiled.fallback
        compiled_err = float((got - ref).abs().max() / ref.abs().max())
        fns = {
            "hf": lambda: lm.run_with_hooks(torch.from_numpy(ids), hooks=hooks),
            "transformer_lens": lambda: tl.run_with_cache(
                torch.from_numpy(ids), names_filter=hooks, stop_at_layer=args.mid + 1
            ),
            "gemm_floor": gemm_floor(hf, args.mid, b, t),
            "written_out": lambda: written(torch.from_numpy(ids)),
            "compiled": lambda: compiled(ids),
        }
        batch_ms = {name: best_ms(fn, args.repeats) for name, fn in fns.items()}
    for name, value in batch_ms.items():
        print(f"{name}: {value:.1f} ms per batch", file=sys.stderr, flush=True)
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        bench_ours(lm, 512, args.mid, args.batch_size, Path(tmp) / "warm")
        bench_ours(lm, 512, args.mid, args.batch_size, Path(tmp) / "warm-c", compile=True)
        for r in range(2):  # interleaved rounds, best of 2
            for name, kw in (("collect", {}), ("collect_compiled", {"compile": True})):
                out = Path(tmp) / f"{name}-{r}"
                rate = bench_ours(lm, args.tokens, args.mid, args.batch_size, out, **kw)
                rates[name] = max(rates.get(name, 0.0), rate)
            rate = bench_transformer_lens(tl, ctxs, args.mid, args.batch_size)
            rates["transformer_lens"] = max(rates.get("transformer_lens", 0.0), rate)
    n_batches = len(ctxs) / args.batch_size  # full-batch equivalents (the last is partial)
    n_sample = sum(int(c.sample.sum()) for c in ctxs)
    collect_s, tl_s = n_sample / rates["collect"], n_sample / rates["transformer_lens"]
    overhead_ms = (collect_s * 1e3 - n_batches * batch_ms["hf"]) / n_batches
    need_ms = tl_s * 1e3 / 1.4 / n_batches - overhead_ms
    result = {
        "batch": [b, t],
        "stop_layer": args.mid + 1,
        "threads": args.threads,
        "repeats": args.repeats,
        "matmul_peak_gflops": round(peak, 1),
        "per_batch_ms": {k: round(v, 1) for k, v in batch_ms.items()},
        "per_batch_vs_transformer_lens": {
            k: round(batch_ms["transformer_lens"] / v, 2) for k, v in batch_ms.items()
        },
        "per_batch_fraction_of_peak": {  # forward FLOPs of the batch / time / matmul peak
            k: round(b * t * flops_per_token(lm, args.mid + 1, t) / (v / 1e3) / (peak * 1e9), 3)
            for k, v in batch_ms.items()
        },
        "max_rel_error_vs_hf": {"written_out": written_err, "compiled": compiled_err},
        "compile_s": round(compile_s, 1),
        "end_to_end_tokens_per_s": {k: round(v) for k, v in rates.items()},
        "end_to_end_vs_transformer_lens": {
            k: round(v / rates["transformer_lens"], 2) for k, v in rates.items()
        },
        "collect_overhead_ms_per_batch": round(overhead_ms, 1),
        "forward_ms_per_batch_for_1.4x": round(need_ms, 1),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
