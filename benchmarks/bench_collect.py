"""Collection throughput: ``crosslayer.collect`` against the studies' loop and TransformerLens.

    python benchmarks/bench_collect.py --tokens 8192            # throughput, same run
    python benchmarks/bench_collect.py --rss 100000 --rss 400000  # peak RSS, one process each
    python benchmarks/bench_collect.py --variants bf16,eager,batch16 --repeats 2  # levers
    python benchmarks/bench_collect.py --device cuda --variants bf16  # on a GPU

``--variants`` times other settings of crosslayer's own path in the same run, interleaved
with the fp32 default and TransformerLens (best of ``--repeats`` rounds each, so a burst of
foreign load on a shared machine hurts every method alike): ``bf16`` (the model in
bfloat16), ``eager`` (eager attention instead of SDPA), ``batchN`` (N contexts a forward),
``compile`` (``torch.compile`` of every block's MLP and norms), ``compile-blocks``
(``torch.compile`` of every decoder block whole, attention included), ``compiled``
(``collect(compile=True)``: the written-out blocks of ``crosslayer.model.compiled``,
compiled with weight freezing; ``--rss ... --compile`` measures its memory).

All three read ``hook_embed`` and ``blocks.{mid}.hook_resid_post`` of the same weights on
the same 128-token contexts of builtin:wiki and keep the activations in float32:
(a) HF forward with ``output_hidden_states=True``, one document at a time (the studies);
(b) TransformerLens ``run_with_cache(names_filter=..., stop_at_layer=mid + 1)`` in batches;
(c) ``crosslayer.collect`` (batches, stops after the deepest hook, writes the store).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from crosslayer.corpus import iter_contexts, load_corpus
from crosslayer.model import load_model
from crosslayer.store import collect


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(n: int = 2048, repeats: int = 10, device: str = "cpu") -> float:
    """Best fp32 GFLOP/s of an n x n matmul on this machine, now."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    _sync(device)
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def variant(name: str, base, device: str):
    """A model set up as variant ``name`` (see the module docstring) and its batch size."""
    if name in ("fp32", "compiled"):
        return base, None
    if name.startswith("batch"):
        return base, int(name.removeprefix("batch"))
    if name == "bf16":
        return load_model("gemma-3-270m", device=device, dtype="bfloat16"), None
    lm = load_model("gemma-3-270m", device=device)
    if name == "eager":
        lm.model.set_attn_implementation("eager")
    elif name == "compile-blocks":
        for layer in lm.model.model.layers:
            layer.compile(dynamic=False)
    elif name == "compile":
        for layer in lm.model.model.layers:
            for part in ("mlp", "input_layernorm", "post_attention_layernorm",
                         "pre_feedforward_layernorm", "post_feedforward_layernorm"):  # fmt: skip
                getattr(layer, part).compile(dynamic=True)
    else:
        raise SystemExit(f"unknown variant {name!r}")
    return lm, None


def flops_per_token(lm, n_layers: int, context_len: int) -> float:
    """Forward FLOPs per token through ``n_layers`` blocks: 2 x block weights + attention."""
    layers = lm.model.model.layers[:n_layers]
    weights = sum(p.numel() for layer in layers for p in layer.parameters() if p.ndim == 2)
    cfg = lm.model.config.get_text_config()
    attn = 4 * cfg.num_attention_heads * cfg.head_dim * (context_len / 2) * n_layers  # QK^T, AV
    return 2 * weights + attn


def contexts(lm, n_tokens: int, context_len: int):
    out, n = [], 0
    for ctx in iter_contexts(load_corpus("builtin:wiki"), lm.tokenizer, context_len=context_len):
        out.append(ctx)
        n += int(ctx.sample.sum())
        if n >= n_tokens:
            return out
    return out


def bench_hf_per_document(lm, ctxs, mid: int) -> float:
    """(a) The studies: one document (context) per forward, all hidden states, then pick."""
    n, t = 0, time.perf_counter()
    with torch.inference_mode():
        for ctx in ctxs:
            keep = np.flatnonzero(ctx.sample)
            ids = torch.from_numpy(ctx.tokens[: keep[-1] + 1][None]).to(lm.device)
            hs = lm.model(ids, output_hidden_states=True).hidden_states
            _ = [hs[0][0, keep].float().cpu().numpy(), hs[mid + 1][0, keep].float().cpu().numpy()]
            n += len(keep)
    return n / (time.perf_counter() - t)


def transformer_lens(lm):
    """TransformerLens's HookedTransformer on the same weights (fp32, the model's device)."""
    from transformer_lens import HookedTransformer
    from transformers import AutoTokenizer

    lm.model.config.__dict__.pop("quantization_config", None)
    # TransformerLens re-opens the tokenizer by its name_or_path to add BOS: give it a copy
    # saved to a local directory, so that name is a path that works offline
    tok_dir = tempfile.mkdtemp()
    lm.tokenizer.save_pretrained(tok_dir)
    tl = HookedTransformer.from_pretrained_no_processing(
        "google/gemma-3-270m",
        hf_model=lm.model,
        tokenizer=AutoTokenizer.from_pretrained(tok_dir),
        device=str(lm.device),
        dtype=torch.float32,
    )
    return tl


def bench_transformer_lens(tl, ctxs, mid: int, batch_size: int) -> float:
    """(b) TransformerLens, names filter + stop_at_layer, in batches."""
    names = ["hook_embed", f"blocks.{mid}.hook_resid_post"]
    device = str(tl.cfg.device)
    n, t = 0, time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(ctxs), batch_size):
            batch = ctxs[i : i + batch_size]
            ids = torch.from_numpy(np.stack([c.tokens for c in batch])).to(device)
            mask = torch.from_numpy(np.stack([c.sample for c in batch])).to(device)
            _, cache = tl.run_with_cache(ids, names_filter=names, stop_at_layer=mid + 1)
            _ = [cache[name][mask].cpu().numpy() for name in names]
            n += int(mask.sum())
    _sync(device)
    return n / (time.perf_counter() - t)


def bench_ours(
    lm, n_tokens: int, mid: int, batch_size: int, out: Path, compile: bool = False
) -> float:
    t = time.perf_counter()
    store = collect(
        lm,
        ["hook_embed", f"blocks.{mid}.hook_resid_post"],
        corpus="builtin:wiki",
        n_tokens=n_tokens,
        out=out,
        batch_size=batch_size,
        progress=False,
        compile=compile,
    )
    return store.n_tokens / (time.perf_counter() - t)


def rss_run(n_tokens: int, mid: int, batch_size: int, compile: bool = False) -> dict:
    """Collect ``n_tokens`` in this process; report peak RSS (ru_maxrss) and tokens/s."""
    lm = load_model("gemma-3-270m", device="cpu")
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        rate = bench_ours(lm, n_tokens, mid, batch_size, Path(tmp) / "s", compile=compile)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "tokens": n_tokens,
        "peak_rss_mb": peak,
        "rss_after_load_mb": after_load,
        "tokens_per_s": rate,
        "compile": compile,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--mid", type=int, default=8, help="resid_post block (Gemma 3 270M: 0..17)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--variants",
        default="",
        help="comma list: bf16, eager, batchN, compile, compile-blocks, compiled",
    )
    ap.add_argument("--compile", action="store_true", help="--rss runs: collect(compile=True)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved rounds (best of)")
    ap.add_argument("--rss", type=int, action="append", help="peak-RSS run(s) of N tokens")
    ap.add_argument("--_rss-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args._rss_child:
        print(json.dumps(rss_run(args._rss_child, args.mid, args.batch_size, args.compile)))
        return
    if args.rss:
        for n in args.rss:  # a fresh process per size, so ru_maxrss is that run's peak
            cmd = [
                sys.executable,
                __file__,
                "--_rss-child",
                str(n),
                "--mid",
                str(args.mid),
                "--batch-size",
                str(args.batch_size),
                "--threads",
                str(args.threads),
                *(["--compile"] if args.compile else []),
            ]
            result = subprocess.run(cmd, capture_output=True, text=True, check=True)
            print(result.stdout.strip().splitlines()[-1], flush=True)
        return

    lm = load_model("gemma-3-270m", device=args.device, dtype="float32")
    ctxs = contexts(lm, args.tokens, 128)
    peak = matmul_peak(device=args.device)
    flops = flops_per_token(lm, args.mid + 1, 128)
    names = ["fp32", *[v for v in (args.variants or "").split(",") if v]]
    models = {name: variant(name, lm, args.device) for name in names}
    tl = transformer_lens(lm)
    best: dict[str, float] = {}

    def keep(name: str, rate: float) -> None:
        best[name] = max(best.get(name, 0.0), rate)
        print(f"{name}: {rate:.0f} tokens/s", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, batch) in models.items():  # warm-up: thread pools, compilation
            bench_ours(model, 512, args.mid, batch or args.batch_size, Path(tmp) / f"w-{name}",
                       compile=name == "compiled")  # fmt: skip
        for r in range(args.repeats):  # interleaved rounds: foreign load hits all alike
            for name, (model, batch) in models.items():
                out = Path(tmp) / f"{name}-{r}"
                keep(f"crosslayer {name}", bench_ours(model, args.tokens, args.mid,
                                                      batch or args.batch_size, out))  # fmt: skip
            keep("transformer_lens", bench_transformer_lens(tl, ctxs, args.mid, args.batch_size))
    del tl
    hf = bench_hf_per_document(lm, ctxs, args.mid)
    print(f"HF per document: {hf:.0f} tokens/s", file=sys.stderr, flush=True)
    ours, tl_rate = best["crosslayer fp32"], best["transformer_lens"]
    result = {
        "tokens": args.tokens,
        "device": args.device,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "stop_layer": args.mid + 1,
        "repeats": args.repeats,
        "matmul_peak_gflops": round(peak, 1),
        "mflop_per_token": round(flops / 1e6, 2),
        "tokens_per_s": {
            "crosslayer": round(ours),
            "hf_per_document": round(hf),
            "transformer_lens": round(tl_rate),
            **{k: round(v) for k, v in best.items() if k not in ("crosslayer fp32",)},
        },
        "ratio_vs_hf": round(ours / hf, 2),
        "ratio_vs_tl": round(ours / tl_rate, 2),
        "variant_ratio_vs_fp32": {
            k: round(v / ours, 2) for k, v in best.items() if k.startswith("crosslayer ")
        },
        "fraction_of_peak": round(ours * flops / (peak * 1e9), 3),
        "fraction_of_peak_by_method": {
            k: round(v * flops / (peak * 1e9), 3) for k, v in best.items()
        },
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
