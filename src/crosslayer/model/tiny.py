"""Tiny, randomly initialised models with an offline tokenizer, for tests and examples.

transformers builds a Gemma 2 or Gemma 3 model from a config alone, so the hook mapping,
the store and every estimator can be tested in seconds with no download.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)

from crosslayer.device import resolve_device, resolve_dtype
from crosslayer.errors import CrosslayerError
from crosslayer.model.loading import LoadedModel, _wrap
from crosslayer.provenance import config_hash

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0..3, as in Gemma's vocabulary


def _training_text() -> Iterator[str]:
    """Real English text that ships with gensim, so the tokenizer has real merges."""
    # local: start-up cost (gensim)
    from gensim.test.utils import datapath

    with open(datapath("lee_background.cor"), encoding="utf-8") as f:
        yield from f


@functools.lru_cache(maxsize=4)
def tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained offline, with Gemma's special-token ids.

    Deterministic: the same vocabulary on every machine.
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )


def tiny_config(
    family: Literal["gemma3", "gemma2"] = "gemma3",
    *,
    n_layers: int = 4,
    d_model: int = 64,
    vocab_size: int = 512,
) -> PretrainedConfig:
    """A Gemma 2 / Gemma 3 config of toy size that keeps the family's features.

    Sandwich norms, GQA, and sliding-window layers mixed with global ones (the window is 8
    tokens, so sequences longer than 8 exercise it).
    """
    if family not in ("gemma3", "gemma2"):
        raise CrosslayerError(f"unknown tiny model family {family!r}", "use 'gemma3' or 'gemma2'")
    if n_layers < 1 or d_model < 8 or d_model % 4:
        raise CrosslayerError(
            f"tiny model needs n_layers >= 1 and d_model a multiple of 4 >= 8, got "
            f"n_layers={n_layers}, d_model={d_model}",
            "pass e.g. n_layers=4, d_model=64",
        )
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=d_model // 4,
        query_pre_attn_scalar=d_model // 4,
        max_position_embeddings=512,
        sliding_window=8,
        # every other layer global, as in Gemma 2 (Gemma 3 uses 5 local : 1 global)
        layer_types=[
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)
        ],
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=True,
    )
    if family == "gemma2":
        return Gemma2Config(**common)
    return Gemma3TextConfig(**common)


def tiny_model(
    family: Literal["gemma3", "gemma2"] = "gemma3",
    n_layers: int = 4,
    d_model: int = 64,
    seed: int = 0,
    vocab_size: int = 512,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> LoadedModel:
    """A randomly initialised Gemma 2 / Gemma 3 causal LM with :func:`tiny_tokenizer`.

    The same ``seed`` gives the same weights. Builds in well under a second.
    """
    config = tiny_config(family, n_layers=n_layers, d_model=d_model, vocab_size=vocab_size)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    with torch.random.fork_rng(devices=[]):  # seed the init without touching global RNG state
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    spec = f"tiny:{family}"
    weights = f"tiny:seed={seed}:config={config_hash(config.to_dict())}"
    return _wrap(
        model,
        tiny_tokenizer(vocab_size),
        spec=spec,
        source=spec,
        device=dev,
        dtype=dt,
        weights=weights,
    )
