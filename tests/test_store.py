"""The activation store: contents equal a direct forward pass, reading API, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crosslayer.corpus import iter_contexts, load_corpus
from crosslayer.errors import ConfigMismatchError, CrosslayerError, DataError
from crosslayer.model import tiny_model
from crosslayer.store import collect, open_store, verify_store
from crosslayer.store.format import sha256_file

HOOKS = ["hook_embed", "blocks.2.hook_resid_post"]
N, SHARD = 3000, 700  # 5 shards, the last one trimmed to 200 tokens
SETTINGS = dict(context_len=32, heldout_frac=0.3, seed=1)


@pytest.fixture(scope="module")
def lm():
    return tiny_model()


@pytest.fixture(scope="module")
def store(lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "s"
    return collect(
        lm, HOOKS, corpus="builtin:news", n_tokens=N, out=out, batch_size=3,
        shard_tokens=SHARD, progress=False, **SETTINGS,
    )  # fmt: skip


@pytest.fixture(scope="module")
def direct(lm):
    """The same N tokens computed independently: one context at a time, with a full
    attention mask and padding kept, gathered with the corpus's own sample mask."""
    acts: dict[str, list[np.ndarray]] = {h: [] for h in HOOKS}
    meta: dict[str, list[np.ndarray]] = {k: [] for k in ("tokens", "positions", "doc", "split")}
    n = 0
    contexts = iter_contexts(load_corpus("builtin:news"), lm.tokenizer, **SETTINGS)
    for ctx in contexts:
        ids = torch.from_numpy(ctx.tokens[None])
        mask = torch.from_numpy(ctx.tokens != lm.tokenizer.pad_token_id)[None].long()
        out = lm.run_with_hooks(ids, mask, hooks=HOOKS)
        pos = np.flatnonzero(ctx.sample)[: N - n]
        for h in HOOKS:
            acts[h].append(out[h][0].numpy()[pos])
        meta["tokens"].append(ctx.tokens[pos])
        meta["positions"].append(pos)
        meta["doc"].append(np.full(len(pos), ctx.doc_id))
        meta["split"].append(np.full(len(pos), ctx.split))
        n += len(pos)
        if n == N:
            break
    return {k: np.concatenate(v) for k, v in {**acts, **meta}.items()}


def test_store_equals_direct_forward(store, direct):
    assert store.n_tokens == N and len(store) == N
    assert [s["n_tokens"] for s in store.manifest["shards"]] == [700, 700, 700, 700, 200]
    np.testing.assert_array_equal(store.tokens, direct["tokens"])
    np.testing.assert_array_equal(store.positions, direct["positions"])
    np.testing.assert_array_equal(store.doc_ids, direct["doc"])
    np.testing.assert_array_equal(store.split, direct["split"])
    assert 0 < store.split.mean() < 1  # both splits present, so the split checks below bite
    assert store.positions.min() == 1  # BOS (position 0) is never a sample
    for h in HOOKS:
        assert store.d(h) == 64
        stored = store.activations(h).to_numpy()
        assert stored.dtype == np.float32
        np.testing.assert_allclose(stored, direct[h], rtol=1e-5, atol=1e-5)


def test_hook_embed_is_the_scaled_embedding(store, lm):
    # independent of the hook machinery: Gemma scales the embedding by sqrt(d_model)
    emb = lm.model.get_input_embeddings().weight.detach().numpy()
    expected = emb[store.tokens] * np.float32(np.sqrt(64))
    np.testing.assert_allclose(store.activations("hook_embed")[:], expected, rtol=1e-6)


def test_manifest_and_files(store):
    m = store.manifest
    assert m["complete"] is True
    assert m["hooks"] == HOOKS and m["dtype"] == "float32" and m["n_shards"] == 5
    assert m["config"]["n_tokens"] == N and m["config"]["model"]["spec"] == "tiny:gemma3"
    assert len(m["config_hash"]) == 16 and "torch" in m["versions"]
    shard = m["shards"][1]
    assert sorted(shard["files"]) == sorted(
        [f"{h}.npy" for h in HOOKS]
        + ["tokens.npy", "doc_ids.npy", "positions.npy", "context_ids.npy", "split.npy"]
    )
    for name, digest in shard["files"].items():
        assert sha256_file(store.path / shard["name"] / name) == digest
    assert sorted(p.name for p in store.path.iterdir()) == [
        "manifest.json", *[f"shard_{k:05d}" for k in range(5)]
    ]  # fmt: skip
    assert verify_store(store.path).ok
    # context ids number the context stream: non-decreasing, one straddles each boundary
    ctx = store.context_ids
    assert (np.diff(ctx) >= 0).all() and ctx[0] == 0


def test_sharded_array_indexing(store):
    a = store.activations("blocks.2.hook_resid_post")
    full = a.to_numpy()
    assert a.shape == (N, 64) and len(a) == N
    np.testing.assert_array_equal(a[650:1450], full[650:1450])  # spans three shards
    np.testing.assert_array_equal(a[::7], full[::7])
    np.testing.assert_array_equal(a[-1], full[-1])
    idx = np.array([2999, 5, 700, 699, 5, 1400])  # unsorted, repeated, across shards
    np.testing.assert_array_equal(a[idx], full[idx])
    mask = store.split == 1
    np.testing.assert_array_equal(a[mask], full[mask])
    np.testing.assert_array_equal(a.to_numpy(split="heldout"), full[mask])
    with pytest.raises(IndexError):
        a[N]


def test_iter_batches(store):
    full = {h: store.activations(h).to_numpy() for h in HOOKS}
    for split, rows in (("train", store.split == 0), ("heldout", store.split == 1), (None, ...)):
        batches = list(store.iter_batches(HOOKS, split=split, batch_size=512))
        n = len(full[HOOKS[0]][rows])
        assert [len(b[HOOKS[0]]) for b in batches] == [512] * (n // 512) + (
            [n % 512] if n % 512 else []
        )
        for h in HOOKS:
            np.testing.assert_array_equal(np.concatenate([b[h] for b in batches]), full[h][rows])
    (one,) = store.iter_batches("hook_embed", split=None, batch_size=N, dtype=np.float64)
    assert one["hook_embed"].dtype == np.float64 and one["hook_embed"].flags.writeable
    with pytest.raises(CrosslayerError, match="not in store"):
        next(store.iter_batches(["blocks.0.hook_resid_post"]))


def test_float16_store_and_resume_of_finished_store(lm, store, tmp_path):
    out = tmp_path / "h"
    kw = dict(corpus="builtin:news", n_tokens=1000, shard_tokens=SHARD, progress=False)
    half = collect(lm, HOOKS, out=out, dtype="float16", **kw, **SETTINGS)
    assert half.manifest["dtype"] == "float16"
    got = half.activations("blocks.2.hook_resid_post")[:]
    assert got.dtype == np.float16
    want = store.activations("blocks.2.hook_resid_post")[:1000].astype(np.float16)
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2e-3)
    # same command again: nothing is redone
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    collect(lm, HOOKS, out=out, dtype="float16", **kw, **SETTINGS)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")} == before


def test_config_mismatch_is_refused_before_any_work(lm, store):
    before = (store.path / "manifest.json").read_bytes()
    with pytest.raises(ConfigMismatchError, match=r"different config \(differs in: n_tokens\)"):
        collect(lm, HOOKS, corpus="builtin:news", n_tokens=N + 1, out=store.path,
                shard_tokens=SHARD, progress=False, **SETTINGS)  # fmt: skip
    assert (store.path / "manifest.json").read_bytes() == before


def test_verify_reports_damaged_and_missing_files(lm, tmp_path):
    out = tmp_path / "v"
    collect(lm, HOOKS, corpus="builtin:news", n_tokens=1000, out=out, shard_tokens=400,
            progress=False)  # fmt: skip
    target = out / "shard_00001" / "blocks.2.hook_resid_post.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    (out / "shard_00002" / "tokens.npy").unlink()
    report = verify_store(out)
    assert not report.ok
    assert report.damaged == ["shard_00001/blocks.2.hook_resid_post.npy"]
    assert report.missing == ["shard_00002/tokens.npy"]
    assert report.n_files == 3 * 7


@pytest.mark.parametrize(
    ("hooks", "message"),
    [
        (["hook_embed", "blocks.1.hook_resd_post"], r"unknown hook .* blocks.\{L\}.hook_resid"),
        (["blocks.4.hook_resid_post"], "has 4 layers"),
    ],
)
def test_bad_hooks_fail_before_writing(lm, tmp_path, hooks, message):
    with pytest.raises(CrosslayerError, match=message):
        collect(lm, hooks, corpus="builtin:news", n_tokens=100, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def _broken_model(scale: float | None):
    """A real tiny model whose embedding is scaled (overflow) or whose layer 1 outputs NaN."""
    lm = tiny_model()
    with torch.no_grad():
        if scale is None:
            lm.model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
        else:
            lm.model.get_input_embeddings().weight.mul_(scale)
    return lm


@pytest.mark.parametrize(
    ("scale", "dtype", "message"),
    [
        (None, "float32", r"non-finite activations \(NaN or inf\) at blocks.2.hook_resid_post"),
        (1e7, "float16", r"hook_embed reach .* beyond float16's range .* use --dtype float32"),
    ],
)
def test_bad_values_fail_before_writing_the_shard(tmp_path, scale, dtype, message):
    out = tmp_path / "bad"
    with pytest.raises(DataError, match=message):
        collect(_broken_model(scale), HOOKS, corpus="builtin:news", n_tokens=2000, out=out,
                dtype=dtype, shard_tokens=500, progress=False)  # fmt: skip
    assert [p.name for p in out.iterdir()] == ["manifest.json"]  # no shard, no temp dir
    assert json.loads((out / "manifest.json").read_text())["shards"] == []


def test_small_corpus_gives_smaller_store_with_warning(lm, tmp_path):
    corpus = tmp_path / "small.jsonl"
    docs = ["The cat sat on the mat and looked at the dog for a long time."] * 2 + [
        "Markets rose on Monday as investors welcomed the news from the bank."
    ]
    corpus.write_text("".join(json.dumps({"text": t, "i": i}) + "\n" for i, t in enumerate(docs)))
    with pytest.warns(UserWarning, match="has only"):
        small = collect(lm, HOOKS, corpus=str(corpus), n_tokens=10_000, out=tmp_path / "s",
                        progress=False)  # fmt: skip
    # the duplicate document is dropped, so only two contexts' tokens are stored
    expected = sum(
        int(c.sample.sum()) for c in iter_contexts(load_corpus(str(corpus)), lm.tokenizer)
    )
    assert small.n_tokens == expected == len(small.tokens) and 0 < expected < 100
    assert small.manifest["corpus_exhausted"] is True
    assert len(set(small.context_ids.tolist())) == 2


def test_open_store_errors(tmp_path):
    with pytest.raises(CrosslayerError, match="no activation store"):
        open_store(tmp_path)
    manifest = {"format": "crosslayer-activation-store", "complete": False, "n_shards": 3}
    Path(tmp_path / "manifest.json").write_text(json.dumps({**manifest, "shards": []}))
    with pytest.raises(DataError, match=r"incomplete \(0 of 3 shards"):
        open_store(tmp_path)


# -- resident memory: file pages are given back after a pass (issue 2) -----------------------


def _rss_of(address: int) -> int:
    """Resident kB of the mapping that holds ``address``."""
    from crosslayer.store.residency import mappings

    (m,) = [m for m in mappings() if m.start <= address < m.end]
    return m.rss_kb


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="needs Linux /proc")
def test_release_file_pages_drops_clean_pages_and_keeps_written_ones(tmp_path):
    """Like the model's memory-mapped embedding: a private (copy-on-write) file mapping used
    as a tensor's storage. Its touched pages leave the RSS; the values stay the same; a
    mapping with a written page is left alone, so no write is ever lost."""
    from crosslayer.store.residency import release_file_pages

    values = np.random.default_rng(0).normal(size=(4096, 256)).astype(np.float32)  # 4 MiB
    values.tofile(tmp_path / "w.bin")
    clean = np.memmap(tmp_path / "w.bin", np.float32, mode="c", shape=values.shape)
    weight = torch.from_numpy(clean)
    assert float(weight.sum()) == pytest.approx(float(values.sum()), rel=1e-5)  # touch all
    assert _rss_of(weight.data_ptr()) >= 4096
    assert release_file_pages([weight.data_ptr()]) >= 4 << 20
    assert _rss_of(weight.data_ptr()) < 64
    np.testing.assert_array_equal(weight.numpy(), values)  # faulted back in, unchanged

    written = np.memmap(tmp_path / "w.bin", np.float32, mode="c", shape=values.shape)
    written[:] += 1.0  # every page copied-on-write: dropping them would undo the write
    assert release_file_pages([written.ctypes.data]) == 0
    np.testing.assert_array_equal(np.asarray(written), values + 1.0)


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="needs Linux /proc")
def test_bulk_reads_give_back_the_shard_pages(tmp_path):
    """to_numpy and iter_batches copy the rows they return; the memory-mapped shard pages
    must not stay resident as well (they doubled the memory of loading a store)."""
    from crosslayer.store.reader import ShardedArray

    rng = np.random.default_rng(1)
    parts = []
    for k in range(2):
        np.save(tmp_path / f"{k}.npy", rng.normal(size=(8192, 160)).astype(np.float32))  # 5 MiB
        parts.append(np.load(tmp_path / f"{k}.npy", mmap_mode="r"))
    expected = np.concatenate([np.load(tmp_path / f"{k}.npy") for k in range(2)])
    x = ShardedArray(parts)
    np.testing.assert_array_equal(x.to_numpy(), expected)
    assert max(_rss_of(p.ctypes.data) for p in parts) < 64  # was ~5,000 kB each
    np.testing.assert_array_equal(x[np.arange(0, 16384, 2)], expected[::2])  # _take: same
    assert max(_rss_of(p.ctypes.data) for p in parts) < 64
    np.testing.assert_array_equal(x[5], expected[5])  # a small read keeps its page
    assert _rss_of(parts[0].ctypes.data) >= 4


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="needs Linux /proc")
def test_collect_gives_back_memory_mapped_weights(store, tmp_path, monkeypatch):
    """The real model's embedding table is a private mapping of model.safetensors; collect
    must drop its touched pages after each shard, and the stored activations must not
    change (the pages fault back in with the same bytes)."""
    import crosslayer.store.residency as residency

    lm = tiny_model()  # a fresh copy: its embedding is swapped for a file-backed one
    emb = lm.model.get_input_embeddings()
    emb.weight.detach().numpy().tofile(tmp_path / "embed.bin")
    mapped = np.memmap(tmp_path / "embed.bin", np.float32, mode="c", shape=emb.weight.shape)
    emb.weight = torch.nn.Parameter(torch.from_numpy(mapped), requires_grad=False)
    monkeypatch.setattr(residency, "_MIN_BYTES", 0)  # the tiny table is only 128 kB
    out = collect(
        lm, HOOKS, corpus="builtin:news", n_tokens=N, out=tmp_path / "s", batch_size=3,
        shard_tokens=SHARD, progress=False, **SETTINGS,
    )  # fmt: skip
    assert _rss_of(mapped.ctypes.data) == 0
    for hook in HOOKS:
        np.testing.assert_array_equal(
            out.activations(hook).to_numpy(), store.activations(hook).to_numpy()
        )
