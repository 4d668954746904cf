"""Splice a map into a model: inside ``with splice(...)``, a hook's value is replaced on every pass.

>>> from crosslayer.transcoder import AffineTranscoder
>>> T = AffineTranscoder.from_pretrained("runs/demo/transcoder")
>>> with splice(lm, T):                       # target hook := T(source hook), same pass
...     logits = lm.model(input_ids=ids).logits

The source hook's tensor is observed as it fires, and the target hook's tensor is replaced
through :func:`crosslayer.model.hooks.install_replacement`, the code path of
``LoadedModel.run_with_replacement`` (and so of every CE-loss measure built on either). The
hooks are removed when the block ends, also on an exception, so the model is clean after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from crosslayer.errors import CrosslayerError
from crosslayer.model.hooks import hook_depth, install_observer, install_replacement, parse_hook
from crosslayer.model.loading import LoadedModel

# fn(source value [batch, seq, d_source], input_ids [batch, seq] or None) -> target replacement
SpliceFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def transcoder_fn(transcoder: Any) -> SpliceFn:
    """``T(x) = x W^T + b`` in float32 on the activations' device, as ``T.predict`` computes it."""
    w = torch.as_tensor(transcoder.coef_, dtype=torch.float32)
    b = torch.as_tensor(transcoder.intercept_, dtype=torch.float32)

    def fn(x: torch.Tensor, _ids: torch.Tensor | None) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).float()
        out = torch.addmm(b.to(x.device), flat, w.to(x.device).T)
        return out.reshape(*x.shape[:-1], w.shape[0])

    return fn


@contextmanager
def splice(
    lm: LoadedModel,
    target: Any,
    fn: SpliceFn | None = None,
    *,
    source_hook: str | None = None,
    check_model: bool = True,
) -> Iterator[LoadedModel]:
    """Inside the block, every forward pass of ``lm.model`` has ``target``'s value replaced.

    Two forms:

    - ``splice(lm, transcoder)``: a fitted :class:`~crosslayer.transcoder.AffineTranscoder`
      that knows its hooks (one reloaded with ``from_pretrained``, e.g. a run's
      ``transcoder/``): the target hook becomes ``T(source hook)`` of the same pass.
      ``check_model`` refuses a transcoder saved for a model with other weights.
    - ``splice(lm, "blocks.5.hook_resid_post", fn, source_hook="hook_embed")``: the target
      becomes ``fn(source value, input_ids)``; without ``source_hook``, ``fn`` receives the
      target's own value. ``input_ids`` is None when the model was called without them.

    Yields ``lm``. Works with and without gradients (the caller chooses ``inference_mode``).
    """
    if isinstance(target, str):
        if fn is None:
            raise CrosslayerError(
                f"splice at {target!r} was given no function",
                "pass fn(source, input_ids) -> replacement, or a fitted transcoder instead",
            )
        target_hook = target
    else:
        target_hook, source_hook, fn = _from_transcoder(lm, target, check_model)
    names = lm.validate_hooks([target_hook] if source_hook is None else [source_hook, target_hook])
    point = parse_hook(target_hook)
    if source_hook is not None and hook_depth(source_hook) > hook_depth(target_hook):
        raise CrosslayerError(
            f"source hook {source_hook} fires after target hook {target_hook}",
            "splice from an earlier hook into a later one",
        )
    assert fn is not None
    seen: dict[str, Any] = {}

    def grab_ids(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.clear()  # a new pass: forget the last one's source value
        seen["ids"] = kwargs.get("input_ids", args[0] if args else None)

    def replacement(value: torch.Tensor) -> torch.Tensor:
        src = value if source_hook is None or source_hook == target_hook else seen.get("source")
        if src is None:
            raise CrosslayerError(
                f"source hook {source_hook} did not fire before {target_hook}",
                "run a full forward pass of lm.model inside the splice",
            )
        return fn(src, seen.get("ids"))

    handles = [lm.model.register_forward_pre_hook(grab_ids, with_kwargs=True)]
    try:
        if source_hook is not None and source_hook != target_hook:
            src_point = parse_hook(names[0])
            handles.append(
                install_observer(lm._layers, src_point, lambda v: seen.__setitem__("source", v))
            )
        handles.append(install_replacement(lm._layers, point, replacement))
        yield lm
    finally:
        for h in handles:
            h.remove()


def _from_transcoder(lm: LoadedModel, tc: Any, check_model: bool) -> tuple[str, str, SpliceFn]:
    """The hooks and map of a transcoder, checked against the model."""
    if not hasattr(tc, "coef_"):
        raise CrosslayerError(
            "splice needs a fitted transcoder or a hook name",
            "pass AffineTranscoder.from_pretrained(RUN/transcoder), or splice(lm, hook, fn)",
        )
    source, target = getattr(tc, "source_hook_", None), getattr(tc, "target_hook_", None)
    if not source or not target:
        raise CrosslayerError(
            "this transcoder does not know its source and target hooks",
            "save it with save_pretrained(dir, source_hook=..., target_hook=...) and reload it, "
            "or use splice(lm, target_hook, fn, source_hook=...)",
        )
    d_out, d_in = tc.coef_.shape
    if d_in != lm.d_model or d_out != lm.d_model:
        raise CrosslayerError(
            f"the transcoder maps {d_in} -> {d_out} dimensions, the model has d_model {lm.d_model}",
            "splice a transcoder fitted on this model's activations",
        )
    saved = (getattr(tc, "model_identity_", None) or {}).get("weights")
    if check_model and saved and saved != lm.identity.get("weights"):
        raise CrosslayerError(
            f"the transcoder was fitted on model weights {saved}, this model has "
            f"{lm.identity.get('weights')}",
            "load the model the run used, or pass check_model=False to splice anyway",
        )
    return str(target), str(source), transcoder_fn(tc)
