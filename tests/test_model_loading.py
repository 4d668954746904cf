"""load_model: specs, errors, the GGUF cache, other decoder families, the real Gemma 3 270M."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from crosslayer.device import resolve_device
from crosslayer.errors import CrosslayerError
from crosslayer.model import LoadedModel, cache_root, load_model, tiny_model, tiny_tokenizer
from crosslayer.model.loading import (
    ALIASES,
    _fast_gguf_reader,
    gguf_cache_dir,
    plain_array_gguf_reader,
)
from tests.conftest import all_cores

IDS = torch.tensor([[2, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49]])


def _save(model: torch.nn.Module, path: Path) -> Path:
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_local_directory_roundtrip(tmp_path: Path) -> None:
    tiny = tiny_model("gemma3", seed=5)
    lm = load_model(str(_save(tiny.model, tmp_path / "m")))
    assert lm.device == resolve_device(None) and lm.dtype == tiny.dtype
    assert not lm.model.training
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert lm.tokenizer.padding_side == "right"
    want = tiny.run_with_hooks(IDS, hooks=["blocks.2.hook_resid_post"])
    got = lm.run_with_hooks(IDS, hooks=["blocks.2.hook_resid_post"])
    name = "blocks.2.hook_resid_post"
    torch.testing.assert_close(got[name].cpu().float(), want[name].cpu().float())
    ident = lm.identity
    assert json.loads(json.dumps(ident)) == ident
    assert (ident["architecture"], ident["model_type"]) == ("Gemma3ForCausalLM", "gemma3_text")
    assert (ident["n_layers"], ident["d_model"], ident["vocab_size"]) == (4, 64, 512)
    assert ident["source"] == str((tmp_path / "m").resolve())
    assert ident["weights"].startswith("config:")


def test_dtype_override(tmp_path: Path) -> None:
    path = _save(tiny_model("gemma2").model, tmp_path / "m")
    lm = load_model(str(path), device="cpu", dtype="bfloat16")
    assert lm.dtype == torch.bfloat16 and lm.identity["dtype"] == "bfloat16"
    assert next(lm.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_other_decoder_families(tmp_path: Path, family: str) -> None:
    if family == "llama":
        cfg = LlamaConfig(
            vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2,
        )  # fmt: skip
    else:
        cfg = GPT2Config(vocab_size=512, n_embd=32, n_layer=3, n_head=4, n_positions=64)
    torch.manual_seed(0)
    lm = load_model(str(_save(AutoModelForCausalLM.from_config(cfg), tmp_path / family)))
    assert lm.n_layers == 3 and lm.d_model == 32
    with torch.inference_mode():
        hs = lm.model(input_ids=IDS.to(lm.device), output_hidden_states=True).hidden_states
    names = [f"blocks.1.hook_{k}" for k in ("resid_pre", "attn_out", "mlp_out", "resid_post")]
    acts = lm.run_with_hooks(IDS, hooks=["hook_embed", *names])
    assert torch.equal(acts["hook_embed"], hs[0])
    assert torch.equal(acts["blocks.1.hook_resid_pre"], hs[1])
    assert torch.equal(acts["blocks.1.hook_resid_post"], hs[2])
    pre, attn, mlp, post = (acts[n] for n in names)
    torch.testing.assert_close((pre + attn) + mlp, post)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("/nonexistent/model.gguf", "does not exist"),
        ("./no-such-model-dir", "does not exist"),
        (
            "nonexistent-org-xyz/no-such-model",
            "neither a local path nor in the local Hugging Face cache",
        ),
    ],
)
def test_bad_specs_are_errors(spec: str, match: str) -> None:
    with pytest.raises(CrosslayerError, match=match):
        load_model(spec)


def test_wrong_local_files_are_errors(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(CrosslayerError, match=r"not a \.gguf file"):
        load_model(str(tmp_path / "weights.bin"))
    with pytest.raises(CrosslayerError, match=r"no config\.json"):
        load_model(str(tmp_path))
    with pytest.raises(CrosslayerError, match="unknown dtype"):
        load_model(str(tmp_path), dtype="float8")


def test_unreadable_gguf_is_an_error_and_leaves_no_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CROSSLAYER_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(CrosslayerError, match="could not read GGUF file"):
        load_model(str(bad))
    assert not (tmp_path / "cache" / "models").exists() or not any(
        (tmp_path / "cache" / "models").iterdir()
    )


def test_gguf_cache_dir_is_keyed_by_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CROSSLAYER_CACHE", str(tmp_path / "cache"))
    assert cache_root() == tmp_path / "cache"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"a" * 10)
    first = gguf_cache_dir(gguf)
    assert first.parent == tmp_path / "cache" / "models" and first.name.startswith("m-")
    assert gguf_cache_dir(gguf) == first
    os.utime(gguf, ns=(0, 10**9))  # same size, different mtime: a different file
    assert gguf_cache_dir(gguf) != first
    gguf.write_bytes(b"b" * 11)
    assert gguf_cache_dir(gguf) != first


# --- the real Gemma 3 270M (dequantised once into the user cache, then loaded from it) --------


def _same_gguf(path: Path | str) -> None:
    """gguf's own reader and the plain-array one see the same fields and tensors."""
    want, got = gguf.GGUFReader(path), plain_array_gguf_reader()(path)
    assert type(got.data) is np.ndarray and type(want.data) is np.memmap
    assert list(got.fields) == list(want.fields)
    for name, f in want.fields.items():
        g = got.fields[name]
        assert (g.offset, g.data, g.types) == (f.offset, f.data, f.types), name
        assert all(np.array_equal(a, b) for a, b in zip(g.parts, f.parts, strict=True)), name
    assert [t.name for t in got.tensors] == [t.name for t in want.tensors]
    for a, b in zip(got.tensors, want.tensors, strict=True):
        assert (a.tensor_type, list(a.shape), a.data_offset) == (b.tensor_type, list(b.shape),
                                                                 b.data_offset)  # fmt: skip
        assert np.array_equal(a.data, b.data), a.name


def test_plain_array_gguf_reader_reads_what_gguf_reads(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_string("general.name", "tiny")
    w.add_uint32("llama.block_count", 2)
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(300)])
    w.add_array("tokenizer.ggml.scores", [float(i) / 7 for i in range(300)])
    w.add_tensor("a", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.add_tensor("b", np.linspace(0, 1, 64, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _same_gguf(path)
    tokens = plain_array_gguf_reader()(path).fields["tokenizer.ggml.tokens"].contents()
    assert tokens[:2] == ["tok0", "tok1"] and len(tokens) == 300


def test_fast_gguf_reader_swaps_gguf_s_reader_for_the_load_only() -> None:
    original = gguf.GGUFReader
    with pytest.raises(RuntimeError), _fast_gguf_reader():
        from gguf import GGUFReader  # as transformers' loader imports it

        assert GGUFReader is plain_array_gguf_reader()
        raise RuntimeError("a failed load")
    assert gguf.GGUFReader is original


@pytest.mark.real_model
def test_plain_array_gguf_reader_on_the_default_model_file() -> None:
    _same_gguf(ALIASES["gemma-3-270m"]())


@pytest.fixture(scope="module")
def gemma() -> LoadedModel:
    with all_cores():
        return load_model()


PROMPT = "The capital of France is"


def _next_token_logits(lm: LoadedModel) -> torch.Tensor:
    ids = lm.tokenizer([PROMPT], return_tensors="pt").input_ids.to(lm.device)
    assert ids[0, 0].item() == lm.tokenizer.bos_token_id
    with torch.inference_mode():
        return lm.model(input_ids=ids).logits[0, -1].float().cpu()


@pytest.mark.real_model
def test_default_model_knows_paris_and_hooks_match(gemma: LoadedModel) -> None:
    assert (gemma.n_layers, gemma.d_model) == (18, 640)
    assert gemma.identity["vocab_size"] == 262144
    assert gemma.identity["weights"].startswith("gguf-sha256:a5fd3b62230aa5ec")
    top5 = [gemma.tokenizer.decode(int(t)) for t in _next_token_logits(gemma).topk(5).indices]
    assert " Paris" in top5, top5
    ids = gemma.tokenizer([PROMPT], return_tensors="pt").input_ids.to(gemma.device)
    with torch.inference_mode():
        hs = gemma.model(input_ids=ids, output_hidden_states=True).hidden_states
    acts = gemma.run_with_hooks(ids, hooks=["hook_embed", "blocks.12.hook_resid_post"])
    assert torch.equal(acts["hook_embed"], hs[0])
    assert torch.equal(acts["blocks.12.hook_resid_post"], hs[13])


@pytest.mark.real_model
def test_second_load_is_cached_fast_and_identical(gemma: LoadedModel) -> None:
    start = time.perf_counter()
    again = load_model()
    seconds = time.perf_counter() - start
    assert seconds < 20, f"cached load took {seconds:.1f} s"
    assert torch.equal(_next_token_logits(again), _next_token_logits(gemma))
