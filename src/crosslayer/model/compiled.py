"""A compiled forward pass for collection: Gemma 3's blocks written out, then ``torch.compile``.

The HF forward of Gemma 3 270M spends a fifth of its fp32 CPU time outside the matrix
products (six RMS norms, tanh-GELU, rotary and attention per block, each a separate pass
over memory, plus Python). ``torch.compile`` fuses those passes, and with inductor's weight
*freezing* prepacks the weights for oneDNN's GEMMs: ``benchmarks/bench_forward_bound.py``
measures the truncated forward 1.2x faster than HF's and 1.5x TransformerLens's. Compiling
HF's decoder blocks as they are gained less (collection 1.07x faster, ``bench_collect.py
--variants compile-blocks``), so :class:`Gemma3Blocks` writes the blocks out on the HF
modules' own weights.

Opt-in (``collect(..., compile=True)``): compiling takes 15-20 s in each process, which a
collection (1.1x faster end to end on 2 CPU cores) gains back after about 500k tokens.
:class:`CompiledForward` pads every batch to one shape with a dynamic batch dimension, so
it compiles once (:func:`compiled_forward` keeps it with the model for later collections),
and checks its first batch against the HF forward: any model it does not reproduce falls
back to HF, with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crosslayer.model.hooks import HookPoint, hook_depth, parse_hook
from crosslayer.model.loading import LoadedModel

_NORMS = (
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
)
# How far the first batch may be from the HF forward, relative to its largest value: fp32
# differs by reordered sums (~1e-7 measured), bf16 by its 8-bit mantissa.
_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9}
_LOW_PRECISION_TOLERANCE = 5e-2


def _text_model(lm: LoadedModel) -> Any:
    """The module that holds the embedding, the rotary embedding and the decoder layers."""
    for module in lm.model.modules():
        if all(hasattr(module, a) for a in ("embed_tokens", "rotary_emb", "layers")):
            return module
    return None


def unsupported(lm: LoadedModel, context_len: int) -> str | None:
    """Why :class:`Gemma3Blocks` cannot stand in for ``lm``'s forward, or None if it can."""
    cfg = lm.model.config.get_text_config()
    if cfg.model_type != "gemma3_text" or _text_model(lm) is None:
        return f"written for Gemma 3 text models, not {cfg.model_type!r}"
    if getattr(cfg, "use_bidirectional_attention", False):
        return "the model's attention is bidirectional"
    if cfg.attn_logit_softcapping is not None:
        return "the model soft-caps attention logits"
    if context_len > cfg.max_position_embeddings:
        return f"context_len {context_len} exceeds the model's {cfg.max_position_embeddings}"
    return None


class Gemma3Blocks(nn.Module):
    """Gemma 3's embedding and blocks up to the deepest of ``points``, on the HF modules'
    weights; ``forward(ids)`` returns the tensor at each point, in the order given.

    The same operations as transformers' Gemma 3 in the same dtypes (norms in float32, cast
    back), fused where PyTorch has one kernel: ``F.rms_norm``, SDPA with grouped keys, one
    pass of rotary. Causal attention without a padding mask: right-padded contexts only.
    """

    def __init__(self, lm: LoadedModel, points: Sequence[HookPoint]) -> None:
        super().__init__()
        hf = _text_model(lm)  # Any: HF modules' attributes are not typed
        assert hf is not None, "check unsupported(lm) first"
        self.cfg = lm.model.config.get_text_config()
        self.points = list(points)
        last = max(p.layer if p.layer is not None else -1 for p in self.points)
        self.embed, self.rotary = hf.embed_tokens, hf.rotary_emb
        self.layers = nn.ModuleList(hf.layers[: last + 1])
        blocks: list[Any] = list(self.layers)
        # Gemma's norms scale by (1 + weight), computed in float32
        self.norm_scales = [
            {n: 1.0 + getattr(block, n).weight.detach().float() for n in _NORMS} for block in blocks
        ]
        self.qk_scales = [
            (1.0 + block.self_attn.q_norm.weight.detach().float(),
             1.0 + block.self_attn.k_norm.weight.detach().float())
            for block in blocks
        ]  # fmt: skip

    def _norm(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), scale, self.cfg.rms_norm_eps).to(x.dtype)

    def _mask(self, t: int, window: int | None, device: torch.device) -> torch.Tensor | None:
        """Boolean [t, t] sliding-window causal mask, or None where plain causal suffices."""
        if window is None or t <= window:
            return None
        q, k = torch.arange(t, device=device)[:, None], torch.arange(t, device=device)[None]
        return (k <= q) & (k > q - window)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out: dict[str, torch.Tensor] = {}
        x = self.embed(ids)
        out["hook_embed"] = x
        b, t, _ = x.shape
        hd = self.cfg.head_dim
        half = hd // 2
        positions = torch.arange(t, device=ids.device)[None].expand(b, t)
        blocks: list[Any] = list(self.layers)
        rope = {
            kind: self.rotary(x, positions, kind)
            for kind in {block.self_attn.layer_type for block in blocks}
        }
        masks = {
            window: self._mask(t, window, ids.device)
            for window in {block.self_attn.sliding_window for block in blocks}
        }
        for i, block in enumerate(blocks):
            attn, mlp, scales = block.self_attn, block.mlp, self.norm_scales[i]
            out[f"blocks.{i}.hook_resid_pre"] = x
            cos, sin = rope[attn.layer_type]
            c, s = cos[..., :half].unsqueeze(1), sin[..., :half].unsqueeze(1)
            h = self._norm(x, scales["input_layernorm"])
            q = self._norm(attn.q_proj(h).view(b, t, -1, hd), self.qk_scales[i][0])
            k = self._norm(attn.k_proj(h).view(b, t, -1, hd), self.qk_scales[i][1])
            v = attn.v_proj(h).view(b, t, -1, hd).transpose(1, 2)
            q, k = _rotate(q.transpose(1, 2), c, s), _rotate(k.transpose(1, 2), c, s)
            mask = masks[attn.sliding_window]
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, scale=attn.scaling,
                enable_gqa=True,
            )  # fmt: skip
            o = attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))
            a = self._norm(o, scales["post_attention_layernorm"])
            out[f"blocks.{i}.hook_attn_out"] = a
            x = x + a
            h = self._norm(x, scales["pre_feedforward_layernorm"])
            h = mlp.down_proj(mlp.act_fn(mlp.gate_proj(h)) * mlp.up_proj(h))
            m = self._norm(h, scales["post_feedforward_layernorm"])
            out[f"blocks.{i}.hook_mlp_out"] = m
            x = x + m
            out[f"blocks.{i}.hook_resid_post"] = x
        return tuple(out[p.name] for p in self.points)


def _rotate(z: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``z [..., head_dim]``: HF's ``z * cos + rotate_half(z) * sin``."""
    half = z.shape[-1] // 2
    z1, z2 = z[..., :half], z[..., half:]
    return torch.cat([z1 * cos - z2 * sin, z2 * cos + z1 * sin], dim=-1)


class CompiledForward:
    """``lm.run_with_hooks`` for collection, compiled once: the contexts are padded to
    ``context_len`` and the batch dimension is dynamic, so every batch of up to
    ``batch_size`` contexts runs the one compiled graph (a batch of one is padded to two:
    PyTorch compiles size 1 apart).

    Its first batch is also run through the HF forward: if the two differ beyond float
    rounding, or compiling fails, it warns and uses the HF forward from then on.
    """

    def __init__(
        self, lm: LoadedModel, hooks: Sequence[str], *, batch_size: int, context_len: int
    ) -> None:
        self.lm, self.batch_size, self.context_len = lm, batch_size, context_len
        self.hooks = sorted(lm.validate_hooks(hooks), key=hook_depth)
        self._compiled: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None = None
        self.fallback: str | None = unsupported(lm, context_len)
        if self.fallback is None:
            blocks = Gemma3Blocks(lm, [parse_hook(h) for h in self.hooks]).eval()
            self._compiled = torch.compile(blocks, dynamic=False)
        self._checked = False

    def __call__(self, ids: np.ndarray) -> dict[str, torch.Tensor]:
        """Activations ``[n, length, d_model]`` at each hook for token ids ``[n, length]``."""
        if self.fallback is not None or self._compiled is None:
            return self.lm.run_with_hooks(torch.from_numpy(ids), hooks=self.hooks)
        n, length = ids.shape
        rows = n if self.batch_size == 1 else max(n, 2)
        # Right padding (any id: causal attention keeps it from every kept position, and the
        # padding rows are cut off), so no pad token is needed.
        full = np.zeros((rows, self.context_len), dtype=np.int64)
        full[:n, :length] = ids
        batch = torch.from_numpy(full).to(self.lm.device)
        if self.batch_size > 1:
            torch._dynamo.mark_dynamic(batch, 0)
        try:
            import torch._inductor.config as inductor_config

            # freezing: the weights become constants of the graph, prepacked for the GEMMs
            with torch.inference_mode(), inductor_config.patch(freezing=True):
                values = self._compiled(batch)
        except Exception as e:  # no C compiler, an unsupported op: the HF forward still works
            return self._fall_back(ids, f"compiling failed ({type(e).__name__}: {e})")
        acts = {h: v[:n, :length] for h, v in zip(self.hooks, values, strict=True)}
        if not self._checked:
            self._checked = True
            plain = self.lm.run_with_hooks(torch.from_numpy(ids), hooks=self.hooks)
            for hook in self.hooks:
                err = _relative_error(acts[hook], plain[hook])
                if err > _TOLERANCE.get(self.lm.dtype, _LOW_PRECISION_TOLERANCE):
                    return self._fall_back(ids, f"{hook} differs from HF's by {err:.2g}", plain)
        return acts

    def _fall_back(
        self, ids: np.ndarray, why: str, plain: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        self.fallback, self._compiled = why, None
        warnings.warn(f"compiled forward not used: {why}; using the HF forward", stacklevel=2)
        return plain if plain is not None else self(ids)


def compiled_forward(
    lm: LoadedModel, hooks: Sequence[str], *, batch_size: int, context_len: int
) -> CompiledForward:
    """The :class:`CompiledForward` of ``lm`` for these settings, made (and compiled) once per
    model: a second collection in the same process starts without compiling."""
    key = (tuple(sorted(lm.validate_hooks(hooks), key=hook_depth)), batch_size, context_len)
    if key not in lm._compiled:
        lm._compiled[key] = CompiledForward(
            lm, hooks, batch_size=batch_size, context_len=context_len
        )
    forward: CompiledForward = lm._compiled[key]
    return forward


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = float(b.abs().amax().float())
    return float((a.float() - b.float()).abs().amax()) / max(scale, 1e-30)
