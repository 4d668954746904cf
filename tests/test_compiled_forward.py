"""The compiled forward (crosslayer.model.compiled) against the HF forward it replaces."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import crosslayer.model.compiled as compiled
from crosslayer.corpus import iter_contexts, load_corpus
from crosslayer.model import load_model
from crosslayer.model.compiled import CompiledForward, Gemma3Blocks, unsupported
from crosslayer.model.hooks import parse_hook
from crosslayer.model.tiny import tiny_model
from crosslayer.store import StoreSpec, collect, collect_together, open_store


def _ids(n: int, length: int, seed: int = 0) -> np.ndarray:
    ids = np.random.default_rng(seed).integers(4, 512, (n, length))
    ids[:, 0] = 2  # BOS
    return ids


def _assert_close(got: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    scale = float(ref.abs().max())
    np.testing.assert_allclose(got.float().numpy(), ref.float().numpy(), rtol=0, atol=rel * scale)


def test_the_written_out_blocks_equal_hf_at_every_hook():
    """Every hook kind of every block, on sequences longer than the sliding window (8)."""
    lm = tiny_model("gemma3", n_layers=4)
    hooks = lm.hook_names()
    ids = _ids(3, 20)
    ref = lm.run_with_hooks(torch.from_numpy(ids), hooks=hooks)
    with torch.inference_mode():
        got = Gemma3Blocks(lm, [parse_hook(h) for h in hooks])(torch.from_numpy(ids))
    assert len(got) == len(hooks) == 17
    for hook, value in zip(hooks, got, strict=True):
        assert value.shape == (3, 20, 64)
        _assert_close(value, ref[hook], 1e-6)


def test_compiled_forward_equals_hf_and_compiles_once():
    lm = tiny_model("gemma3", n_layers=3)
    hooks = ["blocks.2.hook_resid_post", "hook_embed", "blocks.1.hook_mlp_out"]
    forward = CompiledForward(lm, hooks, batch_size=4, context_len=24)
    torch._dynamo.utils.counters.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback would warn
        for n, length, seed in ((4, 24, 0), (3, 17, 1), (1, 9, 2)):  # one graph for all
            ids = _ids(n, length, seed)
            got = forward(ids)
            ref = lm.run_with_hooks(torch.from_numpy(ids), hooks=hooks)
            assert set(got) == set(hooks)
            for hook in hooks:
                assert got[hook].shape == (n, length, 64)
                _assert_close(got[hook], ref[hook], 1e-5)
    assert forward.fallback is None
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_models_it_does_not_write_out_use_the_hf_forward():
    lm = tiny_model("gemma2", n_layers=2)
    assert "not 'gemma2'" in unsupported(lm, 16)
    forward = CompiledForward(lm, ["blocks.1.hook_resid_post"], batch_size=2, context_len=16)
    ids = _ids(2, 16)
    ref = lm.run_with_hooks(torch.from_numpy(ids), hooks=["blocks.1.hook_resid_post"])
    np.testing.assert_array_equal(forward(ids)["blocks.1.hook_resid_post"],
                                  ref["blocks.1.hook_resid_post"])  # fmt: skip
    assert unsupported(tiny_model("gemma3"), 100_000).startswith("context_len 100000 exceeds")


def test_a_first_batch_that_disagrees_with_hf_falls_back_with_a_warning(monkeypatch):
    lm = tiny_model("gemma3", n_layers=2)
    monkeypatch.setitem(compiled._TOLERANCE, torch.float32, 0.0)  # any rounding "disagrees"
    forward = CompiledForward(lm, ["blocks.1.hook_resid_post"], batch_size=2, context_len=16)
    ids = _ids(2, 16)
    with pytest.warns(UserWarning, match="compiled forward not used: blocks.1.hook_resid_post"):
        got = forward(ids)["blocks.1.hook_resid_post"]
    ref = lm.run_with_hooks(torch.from_numpy(ids), hooks=["blocks.1.hook_resid_post"])
    np.testing.assert_array_equal(got, ref["blocks.1.hook_resid_post"])  # HF's own values
    assert forward.fallback is not None and forward._compiled is None


def test_a_compiled_collection_stores_the_same_rows(tmp_path):
    """Two shards, a partial last batch: same rows and metadata, values to float rounding."""
    lm = tiny_model("gemma3", n_layers=2)
    hooks = ["hook_embed", "blocks.1.hook_resid_post"]
    kw = dict(corpus="builtin:wiki", n_tokens=700, context_len=32, batch_size=4,
              shard_tokens=400, progress=False)  # fmt: skip
    plain = collect(lm, hooks, out=tmp_path / "plain", **kw)
    fast = collect(lm, hooks, out=tmp_path / "fast", compile=True, **kw)
    assert fast.n_tokens == plain.n_tokens == 700 and fast.manifest["n_shards"] == 2
    assert fast.manifest["config_hash"] == plain.manifest["config_hash"]
    for key in ("tokens", "doc_ids", "positions", "split"):
        np.testing.assert_array_equal(getattr(fast, key), getattr(plain, key))
    for hook in hooks:
        ref = torch.from_numpy(plain.activations(hook)[:])
        _assert_close(torch.from_numpy(fast.activations(hook)[:]), ref, 1e-5)
    assert open_store(tmp_path / "fast").n_tokens == 700
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    again = collect(lm, hooks, out=tmp_path / "again", compile=True, **kw)  # kept with lm
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    np.testing.assert_array_equal(again.activations(hooks[1])[:], fast.activations(hooks[1])[:])


@pytest.mark.real_model
def test_real_model_compiled_collection_equals_hf_hidden_states(tmp_path):
    lm = load_model("gemma-3-270m", device="cpu")
    hooks = ["hook_embed", "blocks.5.hook_resid_post"]
    store = collect(lm, hooks, corpus="builtin:wiki", n_tokens=1500, out=tmp_path / "s",
                    compile=True, progress=False)  # fmt: skip
    want: list[np.ndarray] = []
    n = 0
    for ctx in iter_contexts(load_corpus("builtin:wiki"), lm.tokenizer, context_len=128):
        pos = np.flatnonzero(ctx.sample)[: 1500 - n]
        with torch.inference_mode():
            hs = lm.model(torch.from_numpy(ctx.tokens[None]), output_hidden_states=True)
        want.append(hs.hidden_states[6][0, pos].numpy())
        n += len(pos)
        if n == 1500:
            break
    ref = np.concatenate(want)
    got = store.activations("blocks.5.hook_resid_post")[:]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_stores_of_one_pass_share_one_compiled_forward(tmp_path):
    """A main store and a smaller store of more hooks (as `crosslayer run`'s depth sweep):
    one graph serves the shards both need and the shards only the main store needs."""
    lm = tiny_model("gemma3", n_layers=3)
    main, sweep = (
        ["hook_embed", "blocks.2.hook_resid_post"],
        [f"blocks.{i}.hook_resid_post" for i in range(3)],
    )
    kw = dict(corpus="builtin:wiki", context_len=32, batch_size=4, shard_tokens=300,
              progress=False)  # fmt: skip

    def specs(tag: str) -> list[StoreSpec]:
        return [StoreSpec(tmp_path / f"{tag}-main", main, 900),
                StoreSpec(tmp_path / f"{tag}-sweep", sweep, 300)]  # fmt: skip

    plain = collect_together(lm, specs("plain"), **kw)
    torch._dynamo.utils.counters.clear()
    fast = collect_together(lm, specs("fast"), compile=True, **kw)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    for a, b in zip(fast, plain, strict=True):
        assert a.n_tokens == b.n_tokens and a.hooks == b.hooks
        for hook in a.hooks:
            ref = torch.from_numpy(b.activations(hook)[:])
            _assert_close(torch.from_numpy(a.activations(hook)[:]), ref, 1e-5)


def test_a_bfloat16_model_compiles_too():
    """bf16 (the CUDA default, opt-in on CPU): within bf16 rounding of the HF forward."""
    lm = tiny_model("gemma3", n_layers=3, dtype="bfloat16")
    hooks = ["hook_embed", "blocks.2.hook_resid_post"]
    forward = CompiledForward(lm, hooks, batch_size=4, context_len=24)
    ids = _ids(4, 24)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = forward(ids)
    ref = lm.run_with_hooks(torch.from_numpy(ids), hooks=hooks)
    assert forward.fallback is None and got[hooks[1]].dtype == torch.bfloat16
    np.testing.assert_array_equal(got["hook_embed"].float(), ref["hook_embed"].float())
    _assert_close(got[hooks[1]], ref[hooks[1]], 5e-2)  # bf16: 8-bit mantissa, 3 blocks
