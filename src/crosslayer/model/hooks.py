"""TransformerLens hook-point names on Hugging Face decoder models, via PyTorch hooks.

A hook name says exactly which tensor of the forward pass is meant, so "layer 20" is never
ambiguous (the seed study read ``hidden_states[20]`` = output of block 19 for an SAE trained
on block 20). The mapping onto HF modules:

    hook_embed                  input of decoder layer 0 (forward pre-hook). This is the scaled
                                embedding: Gemma 2 multiplies by sqrt(d) in the model's forward,
                                not in the embedding module, so hooking ``embed_tokens`` is wrong.
    blocks.{L}.hook_resid_pre   input of decoder layer L
    blocks.{L}.hook_resid_post  output of decoder layer L (before the final norm)
    blocks.{L}.hook_attn_out    Gemma 2/3: output of ``post_attention_layernorm``;
                                otherwise the output of the attention module
    blocks.{L}.hook_mlp_out     Gemma 2/3: output of ``post_feedforward_layernorm``;
                                otherwise the output of the MLP module

:func:`capture` stops the forward pass once the deepest requested hook has fired, by raising
a private exception from that hook: later layers, the final norm and the LM head never run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from crosslayer.errors import CrosslayerError

HookKind = Literal["embed", "resid_pre", "attn_out", "mlp_out", "resid_post"]

# Position of each kind inside block L, so that hooks sort in forward order. resid_post L
# fires (as layer L's output) before resid_pre L+1 (as layer L+1's input).
_OFFSET: dict[str, float] = {"resid_pre": 0.0, "attn_out": 0.25, "mlp_out": 0.5, "resid_post": 0.75}
_BLOCK_RE = re.compile(r"blocks\.(\d+)\.hook_(resid_pre|resid_post|attn_out|mlp_out)")
FORMS = (
    "hook_embed",
    "blocks.{L}.hook_resid_pre",
    "blocks.{L}.hook_attn_out",
    "blocks.{L}.hook_mlp_out",
    "blocks.{L}.hook_resid_post",
)


@dataclass(frozen=True)
class HookPoint:
    """A parsed hook name: its kind and, for block hooks, its layer."""

    kind: HookKind
    layer: int | None = None

    @property
    def name(self) -> str:
        """The canonical TransformerLens name."""
        return "hook_embed" if self.kind == "embed" else f"blocks.{self.layer}.hook_{self.kind}"


def parse_hook(name: str) -> HookPoint:
    """Parse a TransformerLens hook name, e.g. ``blocks.12.hook_resid_post``."""
    if name == "hook_embed":
        return HookPoint("embed")
    m = _BLOCK_RE.fullmatch(name) if isinstance(name, str) else None
    if m is None:
        raise CrosslayerError(
            f"unknown hook name {name!r}", f"use one of the forms: {', '.join(FORMS)}"
        )
    kind: HookKind = m.group(2)  # type: ignore[assignment]  # the regex allows only these
    return HookPoint(kind, int(m.group(1)))


def hook_depth(name: str) -> float:
    """Position of a hook in the forward pass; sorting by it gives the order hooks fire in."""
    p = parse_hook(name)
    return -1.0 if p.layer is None else p.layer + _OFFSET[p.kind]


class _StopForward(Exception):
    """Raised by the deepest hook so that nothing after it is computed."""


def decoder_layers(model: nn.Module, n_layers: int) -> nn.ModuleList:
    """The decoder's list of layers, found generically (``model.layers``, GPT-2's ``h``, ...)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers and "vision" not in name:
            return module
    raise CrosslayerError(
        f"could not find the {n_layers} decoder layers of {type(model).__name__}",
        "use a decoder-only causal LM (Gemma, Llama, GPT-2 style)",
    )


def sublayer(layer: nn.Module, kind: str) -> nn.Module | None:
    """The module whose output is ``attn_out`` / ``mlp_out`` in one decoder layer, if any."""
    # Gemma 2/3 use sandwich norms: the residual adds the *normed* sub-layer output. Llama also
    # has a `post_attention_layernorm`, but it is the pre-MLP norm, so test for the Gemma pair.
    if hasattr(layer, "pre_feedforward_layernorm") and hasattr(layer, "post_feedforward_layernorm"):
        gemma = {"attn_out": "post_attention_layernorm", "mlp_out": "post_feedforward_layernorm"}
        return getattr(layer, gemma[kind], None)
    names = ("self_attn", "attn", "attention") if kind == "attn_out" else ("mlp", "feed_forward")
    return next(
        (getattr(layer, n) for n in names if isinstance(getattr(layer, n, None), nn.Module)), None
    )


@dataclass(frozen=True)
class _Site:
    """Where a hook point lives: a module, and whether it is that module's input or output."""

    module: nn.Module
    is_input: bool


def site(layers: nn.ModuleList, point: HookPoint) -> _Site:
    """The module and side (input or output) that carry ``point``'s tensor."""
    if point.kind == "embed":
        return _Site(layers[0], is_input=True)
    assert point.layer is not None
    layer = layers[point.layer]
    if point.kind == "resid_pre":
        return _Site(layer, is_input=True)
    if point.kind == "resid_post":
        return _Site(layer, is_input=False)
    sub = sublayer(layer, point.kind)
    if sub is None:
        raise CrosslayerError(
            f"{point.name} is not available for {type(layer).__name__}",
            "use hook_embed, hook_resid_pre or hook_resid_post on this model",
        )
    return _Site(sub, is_input=False)


def _first(value: Any) -> torch.Tensor:
    # transformers 5 decoder layers return a tensor; older ones and attention modules a tuple.
    return value if isinstance(value, torch.Tensor) else value[0]


def _input_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def capture(
    model: nn.Module,
    layers: nn.ModuleList,
    points: Sequence[HookPoint],
    inputs: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Run ``model(**inputs)`` and return the tensor at each hook point, stopping at the deepest.

    The caller validates ``points`` and wraps the call in ``torch.inference_mode``.
    """
    wanted = {p.name for p in points}
    out: dict[str, torch.Tensor] = {}

    def store(name: str, value: torch.Tensor) -> None:
        out[name] = value
        if len(out) == len(wanted):  # hooks fire in forward order: this one is the deepest
            raise _StopForward

    handles = [install_observer(layers, p, partial(store, p.name)) for p in points]
    try:
        model(**inputs)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return out


def install_replacement(
    layers: nn.ModuleList, point: HookPoint, fn: Callable[[torch.Tensor], torch.Tensor]
) -> RemovableHandle:
    """Hook the module carrying ``point`` so its tensor becomes ``fn(tensor)`` on every pass.

    The one code path for every replacement (:func:`replace` for one call, the ``splice``
    context manager for many); the caller removes the returned handle.
    """

    def swap(value: torch.Tensor) -> torch.Tensor:
        new = fn(value)
        if not isinstance(new, torch.Tensor) or new.shape != value.shape:
            got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
            raise CrosslayerError(
                f"replacement for {point.name} returned {got}, expected {tuple(value.shape)}",
                "make fn return a tensor of the same shape as its input",
            )
        # an SAE may run in float32 on a bf16 model: hand the model back its own dtype
        return new.to(device=value.device, dtype=value.dtype)

    def pre_hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            return (swap(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": swap(kwargs["hidden_states"])}

    def post_hook(_m: nn.Module, _args: Any, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return swap(output)
        return (swap(output[0]), *output[1:])

    s = site(layers, point)
    if s.is_input:
        return s.module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    return s.module.register_forward_hook(post_hook)


def install_observer(
    layers: nn.ModuleList, point: HookPoint, see: Callable[[torch.Tensor], None]
) -> RemovableHandle:
    """Hook the module carrying ``point`` so ``see(tensor)`` is called on every pass."""
    s = site(layers, point)
    if s.is_input:
        return s.module.register_forward_pre_hook(
            lambda _m, a, k: see(_input_of(a, k)), with_kwargs=True
        )
    return s.module.register_forward_hook(lambda _m, _a, o: see(_first(o)))


def replace(
    model: nn.Module,
    layers: nn.ModuleList,
    point: HookPoint,
    fn: Callable[[torch.Tensor], torch.Tensor],
    inputs: dict[str, torch.Tensor],
) -> torch.Tensor:
    """Run the full model with the tensor at ``point`` replaced by ``fn(tensor)``; return logits."""
    handle = install_replacement(layers, point, fn)
    try:
        logits: torch.Tensor = model(**inputs).logits
    finally:
        handle.remove()
    return logits


class _Skipped(nn.Module):
    """Stands in for a block whose output is overwritten anyway: hands its input on, in the
    form the block returns (a tensor, or a 1-tuple for older decoder layers). Attributes the
    model's loop reads from a layer (e.g. ``attention_type``) come from the block."""

    def __init__(self, block: nn.Module, as_tuple: bool) -> None:
        super().__init__()
        self.block, self.as_tuple = block, as_tuple

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        x = _input_of(args, kwargs)
        return (x,) if self.as_tuple else x

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["block"], name)


def replace_from(
    model: nn.Module,
    layers: nn.ModuleList,
    layer: int,
    value: torch.Tensor,
    inputs: dict[str, torch.Tensor],
    as_tuple: bool = False,
) -> torch.Tensor:
    """Logits with ``blocks.{layer}.hook_resid_post`` set to ``value`` at every position.

    Blocks ``0 … layer`` are not run (their output is all overwritten): the same logits as
    :func:`replace` with ``fn = lambda _: value``, for the cost of the later blocks and the
    head only. ``as_tuple``: the model's decoder layers return tuples.
    """
    kept = [layers[i] for i in range(layer + 1)]
    try:
        for i, block in enumerate(kept):
            layers[i] = _Skipped(block, as_tuple)
        return replace(model, layers, HookPoint("resid_post", layer), lambda _: value, inputs)
    finally:
        for i, block in enumerate(kept):
            layers[i] = block


def layers_return_tuples(
    model: nn.Module, layers: nn.ModuleList, inputs: dict[str, torch.Tensor]
) -> bool:
    """Whether the decoder layers return a tuple (older transformers) rather than a tensor,
    seen on block 0's output (the forward stops there)."""
    seen: list[bool] = []

    def look(_m: nn.Module, _a: Any, output: Any) -> None:
        seen.append(not isinstance(output, torch.Tensor))
        raise _StopForward

    handle = layers[0].register_forward_hook(look)
    try:
        model(**inputs)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return seen[0]
