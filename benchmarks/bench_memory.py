"""Peak memory of the transcoder fit, the probes and SAE training on 1x and 4x the tokens.

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.bench_memory \\
        --store /tmp/bench_default/store --sae /tmp/bench_default/saes/baseline --write

1x = the store's first ``--shards`` shards, 4x = four times as many (a view of the store:
a manifest listing those shards, symlinks to them; the store itself is only read). Every
(stage, size) runs in a fresh process; the process resets its peak-RSS mark
(``/proc/self/clear_refs``) right before the stage and reads ``VmHWM`` right after, so the
figure is the peak while the stage ran, including what the process already held (torch,
the inputs the stage is given).

Stages:

* ``transcoder (streamed)``: :func:`crosslayer.transcoder.fit_transcoder_on_store` (ridge
  from float64 sufficient statistics, batches of 4,096 rows; held-out rows choose alpha);
* ``transcoder (study A)``: what ``crosslayer run`` does: both splits of both hooks loaded
  with ``to_numpy`` (float32) and ``AffineTranscoder().fit`` on train (alpha by GCV);
* ``probes``: ``FeatureProbes.fit`` (``max_iter=30``, as study A) on every train row of the
  source hook, read from the memory-mapped store as the fit asks for rows, for
  ``--probe-features`` alive features of the SAE at ``--sae`` (its
  activations on the target hook, sparse, streamed by column blocks as study A does);
* ``SAE training``: ``crosslayer.sae.train_sae`` streaming the store's train split, study
  A's config (TopK, width 2,048, L0 48, batch 512, lr 1e-3) for a fixed ``--sae-steps``
  steps at each size, with the default shuffle buffer (2^17 tokens) and with a small one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results" / "memory.md"
STAGES = {
    "transcoder_store": "transcoder (streamed from the store)",
    "transcoder_memory": "transcoder (study A: arrays in memory)",
    "probes": "probes (`FeatureProbes.fit`)",
    "sae": "SAE training (shuffle buffer 2^17)",
    "sae_small_buffer": "SAE training (shuffle buffer 2^13)",
}


def proc_status() -> dict[str, float]:
    """VmRSS / VmHWM / RssAnon / RssFile of this process, in MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, value = line.split(":", 1)
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    return out


# A fixed mmap threshold: glibc otherwise raises it after each large free (up to 32 MB), so
# later tensors come from the heap and freed ones may stay resident; the peak then varied by
# ±150 MB between identical runs. With it, every tensor above 128 kB is its own mapping,
# returned on free, and the peak measures live memory (two runs agreed to 1 MB).
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def reset_peak() -> None:
    """Start a new peak-RSS mark (Linux >= 4.0: writing 5 to clear_refs resets VmHWM).

    First hand freed heap back to the OS (glibc ``malloc_trim``): preparing a stage's inputs
    (e.g. encoding the targets with the SAE) frees large temporaries that malloc may keep
    resident, and the peak would then count them as the stage's.
    """
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def substore(src: Path, n_shards: int, dst: Path) -> Path:
    """A read-only view of the first ``n_shards`` shards of ``src`` (symlinks + manifest)."""
    from crosslayer.fs import atomic_write_json

    manifest = json.loads((src / "manifest.json").read_text())
    if n_shards > len(manifest["shards"]):
        raise SystemExit(
            f"{src} has {len(manifest['shards'])} shards, {n_shards} needed: collect more"
        )
    shards = manifest["shards"][:n_shards]
    dst.mkdir(parents=True)
    for s in shards:
        (dst / s["name"]).symlink_to((src / s["name"]).resolve(), target_is_directory=True)
    manifest.update(shards=shards, n_shards=n_shards, n_tokens=sum(s["n_tokens"] for s in shards))
    atomic_write_json(dst / "manifest.json", manifest)
    return dst


class TrainRows:
    """The train rows of a store hook, read from its memory-mapped shards when indexed: what
    a caller streaming from the store passes (nothing is loaded up front)."""

    def __init__(self, array: Any, index: np.ndarray) -> None:
        self.array, self.index = array, index

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.index), int(self.array.shape[1]))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.array[self.index[key]])


def _probe_inputs(store: Any, a: argparse.Namespace) -> tuple[TrainRows, Any, int]:
    """Train rows of the source (memory-mapped), and the SAE's alive features on the target."""
    from crosslayer.experiments.study_a import alive_features, encode_sparse
    from crosslayer.sae import load_sae

    sae = load_sae(a.sae, device="cpu")
    x = TrainRows(store.activations(a.source), np.flatnonzero(store.split == 0))
    y = store.activations(a.target)
    f_train = encode_sparse(sae, y.to_numpy("train", np.float32))
    f_held = encode_sparse(sae, y.to_numpy("heldout", np.float32))
    alive = alive_features(f_train, f_held, 10)[: a.probe_features]
    cols = f_train[:, alive].tocsc()
    return x, (lambda j0, j1: cols[:, j0:j1].toarray()), len(alive)


def run_stage(stage: str, store_path: Path, a: argparse.Namespace) -> dict[str, Any]:
    """Prepare the stage's inputs, then run it between a peak reset and a peak read."""
    import torch

    from crosslayer.store import open_store

    store = open_store(store_path)
    work: Any
    if stage == "transcoder_store":
        from crosslayer.transcoder import fit_transcoder_on_store

        def work() -> None:
            fit_transcoder_on_store(store, a.source, a.target, device="cpu")

    elif stage == "transcoder_memory":
        from crosslayer.transcoder import AffineTranscoder

        def work() -> None:
            xs, ys = store.activations(a.source), store.activations(a.target)
            x, y = xs.to_numpy("train", np.float32), ys.to_numpy("train", np.float32)
            _held = xs.to_numpy("heldout", np.float32), ys.to_numpy("heldout", np.float32)
            AffineTranscoder(device="cpu").fit(x, y)

    elif stage == "probes":
        from crosslayer.probes import FeatureProbes

        x, cols, m = _probe_inputs(store, a)

        def work() -> None:
            FeatureProbes(max_iter=30, device="cpu").fit(x, cols, n_features=m)

    else:
        from crosslayer.sae import SAETrainConfig, train_sae

        cfg = SAETrainConfig(
            arch="topk", width=2048, target_l0=48, batch_size=512, lr=1e-3, device="cpu",
            n_tokens=a.sae_steps * 512, n_checkpoints=0,
            shuffle_buffer=2**13 if stage == "sae_small_buffer" else 2**17,
        )  # fmt: skip
        out = Path(tempfile.mkdtemp()) / "sae"

        def work() -> None:
            train_sae(store, cfg, out, hook=a.target, progress=False)

    torch.set_num_threads(a.threads)
    reset_peak()
    before = proc_status()
    t = time.perf_counter()
    work()
    secs = time.perf_counter() - t
    after = proc_status()
    return {
        "stage": stage,
        "tokens": store.n_tokens,
        "train_tokens": int((store.split == 0).sum()),
        "rss_before_mb": round(before["VmRSS"], 1),
        "peak_rss_mb": round(after["VmHWM"], 1),
        "rss_file_after_mb": round(after["RssFile"], 1),
        "seconds": round(secs, 1),
    }


def child_cmd(stage: str, path: Path, a: argparse.Namespace) -> list[str]:
    return [
        sys.executable, "-m", "benchmarks.bench_memory", "--_child", stage, "--_path", str(path),
        "--source", a.source, "--target", a.target, "--sae", str(a.sae),
        "--probe-features", str(a.probe_features), "--sae-steps", str(a.sae_steps),
        "--threads", str(a.threads),
    ]  # fmt: skip


def report(rows: list[dict[str, Any]], a: argparse.Namespace, command: str) -> str:
    by = {(r["stage"], r["size"]): r for r in rows}
    lines = [
        "# Memory: peak RSS of each stage on 1x and 4x the tokens",
        "",
        f"Command: `{command}`",
        "",
        f"Store `{a.store}` (`{a.source}` → `{a.target}`, d 640, float32): 1x = its first "
        f"{a.shards} shard(s), 4x = the first {4 * a.shards}. One fresh process per stage and "
        f"size; peak = `VmHWM` while the stage ran (reset just before it), so it includes what "
        f"the process already held (Python, torch, the stage's inputs). Probes: "
        f"{a.probe_features} alive features of `{a.sae}`. SAE: {a.sae_steps} steps at both "
        f"sizes. {a.threads} torch threads; {os.cpu_count()} CPU cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end.",
        "",
        "| stage | tokens 1x → 4x | RSS before 1x → 4x (MB) | peak RSS 1x (MB) | "
        "peak RSS 4x (MB) | 4x / 1x | growth above before (MB) | time 1x → 4x (s) |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for stage, label in STAGES.items():
        one, four = by.get((stage, 1)), by.get((stage, 4))
        if not one or not four:
            continue
        ratio = four["peak_rss_mb"] / one["peak_rss_mb"]
        grow = [r["peak_rss_mb"] - r["rss_before_mb"] for r in (one, four)]
        mark = "✔" if ratio <= 1.2 else "✘"
        lines.append(
            f"| {label} | {one['tokens']:,} → {four['tokens']:,} | "
            f"{one['rss_before_mb']:,.0f} → {four['rss_before_mb']:,.0f} | "
            f"{one['peak_rss_mb']:,.0f} | {four['peak_rss_mb']:,.0f} | "
            f"**{ratio:.2f}** {mark} | {grow[0]:,.0f} → {grow[1]:,.0f} | "
            f"{one['seconds']:.1f} → {four['seconds']:.1f} |"
        )
    lines += ["", "Target (issue 7): peak RSS at 4x within 20 % of 1x (ratio ≤ 1.20).", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=Path("/tmp/bench_default/store"))
    p.add_argument("--sae", type=Path, default=Path("/tmp/bench_default/saes/baseline"))
    p.add_argument("--source", default="hook_embed")
    p.add_argument("--target", default="blocks.12.hook_resid_post")
    p.add_argument("--shards", type=int, default=1, help="shards at 1x (4x: four times this)")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset")
    p.add_argument("--probe-features", type=int, default=512)
    p.add_argument("--sae-steps", type=int, default=60)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--write", action="store_true", help=f"write {RESULTS}")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_path", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._child:
        print(json.dumps(run_stage(a._child, a._path, a)))
        return

    command = "HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.bench_memory " + " ".join(
        sys.argv[1:]
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        views = {k: substore(a.store, k * a.shards, Path(tmp) / f"x{k}") for k in (1, 4)}
        for stage in a.stages.split(","):
            for k, path in views.items():
                done = subprocess.run(
                    child_cmd(stage, path, a),
                    capture_output=True,
                    text=True,
                    check=False,
                    env=os.environ | CHILD_ENV,
                )
                if done.returncode != 0:
                    sys.exit(f"{stage} at {k}x failed:\n{done.stderr[-3000:]}")
                row = json.loads(done.stdout.strip().splitlines()[-1]) | {"size": k}
                rows.append(row)
                print(json.dumps(row), flush=True)
    text = report(rows, a, command)
    print(text)
    if a.write:
        notes = RESULTS.read_text().split("<!-- notes -->", 1) if RESULTS.is_file() else []
        RESULTS.write_text(text + ("\n<!-- notes -->" + notes[1] if len(notes) == 2 else ""))


if __name__ == "__main__":
    main()
