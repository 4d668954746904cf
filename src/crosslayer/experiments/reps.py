"""Per-layer representations of one token sequence: raw residuals and SAE latents.

Study B's layers are decoder blocks. A block's residual is read at ``blocks.{L}.hook_resid_post``.
An SAE is read where it was trained, the hook in its config (``hook_mlp_out`` for Gemma Scope
MLP SAEs). The study itself fed MLP-output SAEs the residual stream; that is available as
``sae_on_residual=True`` and warned about, because those latents are then out of distribution.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crosslayer.errors import CrosslayerError
from crosslayer.model import LoadedModel, parse_hook
from crosslayer.model.shape import checked_info
from crosslayer.sae import load_sae
from crosslayer.sae.load import check_sae_spec
from crosslayer.store import open_store

SaeSpec = Any  # a sae_lens SAE, or a spec string for crosslayer.sae.load_sae


def resid_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


@dataclass(frozen=True)
class SaeSite:
    """An SAE and the hook its input is read from."""

    layer: int
    sae: Any  # sae_lens.SAE
    hook: str  # where the latents are computed from in this run
    trained_hook: str  # the SAE's own hook (cfg.metadata.hook_name)

    @property
    def mismatched(self) -> bool:
        return self.hook != self.trained_hook


def parse_layers(text: str | None) -> list[int] | None:
    """CLI ``--layers``: "0,3,6" or a range "0-17"; empty or None means every layer."""
    if not text:
        return None
    try:
        out: list[int] = []
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            if hi and int(hi) < int(lo):
                raise CrosslayerError(
                    f"--layers {text!r}: the range {part.strip()} is empty",
                    f"write LOW-HIGH, e.g. {hi.strip()}-{lo.strip()}",
                )
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        return out
    except ValueError as e:
        raise CrosslayerError(
            f"--layers {text!r} is not a list of layers", "e.g. 0,3,6 or 0-17"
        ) from e


def parse_sae_args(items: Sequence[str]) -> dict[int, str]:
    """CLI ``--sae LAYER=SPEC`` (repeatable) to a mapping layer -> load_sae spec."""
    out = {}
    for item in items:
        layer, sep, spec = item.partition("=")
        if not sep or not layer.strip().isdigit() or not spec.strip():
            raise CrosslayerError(f"--sae {item!r} is not LAYER=SPEC", "e.g. --sae 6=runs/sae_l6")
        out[int(layer)] = spec.strip()
    return out


def check_layers(model: LoadedModel | int, layers: Sequence[int] | None) -> list[int]:
    """Default: every block. Out-of-range or repeated layers are an error. ``model``: the
    model or its number of blocks."""
    n_layers = model if isinstance(model, int) else model.n_layers
    if layers is None:
        return list(range(n_layers))
    out = [int(x) for x in layers]
    bad = [x for x in out if not 0 <= x < n_layers]
    if bad or not out or len(set(out)) != len(out):
        raise CrosslayerError(
            f"layers {out} invalid for a model with {n_layers} blocks",
            f"give distinct layers from 0 to {n_layers - 1}",
        )
    return out


def check_inputs(
    model: str,
    layers: Sequence[int] | None,
    saes: Mapping[int, str] | str | Path | None,
    store: str | Path | None = None,
) -> None:
    """The model spec, ``--layers``, the ``--sae`` specs and ``--store`` of layers / contrast /
    interpret, checked before the model's weights load (reading only its config)."""
    n_layers = checked_info(model).shape.n_layers
    check_layers(n_layers, layers)
    if isinstance(saes, (str, Path)):
        if not Path(saes).is_dir():
            raise CrosslayerError(
                f"--sae-dir {saes} is not a directory", "pass a Gemma Scope clone directory"
            )
    elif saes:
        check_layers(n_layers, list(saes))
        for spec in saes.values():
            check_sae_spec(spec)
    if store is not None:
        open_store(store)


def sae_sites(
    model: LoadedModel,
    saes: Mapping[int, SaeSpec] | str | Path | None,
    *,
    layers: Sequence[int] | None = None,
    sae_on_residual: bool = False,
    l0_rule: str = "min_ge_60",
) -> dict[int, SaeSite]:
    """Resolve the SAEs of a run to :class:`SaeSite` per layer.

    ``saes`` is a mapping layer -> SAE (object or load_sae spec) or a Gemma Scope 1 clone
    directory (``layer_{L}/width_16k/...``; one SAE per requested layer, picked by ``l0_rule``
    as study B did). The SAE's hook must name the layer it is given for.
    """
    if saes is None:
        return {}
    if isinstance(saes, str | Path):
        saes = _from_clone(Path(saes), model, check_layers(model, layers), l0_rule)
    sites: dict[int, SaeSite] = {}
    for layer, spec in saes.items():
        sae = _load(spec, model)
        trained = getattr(sae.cfg.metadata, "hook_name", None)
        if not trained:
            raise CrosslayerError(
                f"the SAE for layer {layer} has no hook name in its config",
                "set cfg.metadata.hook_name or load it with crosslayer.sae.load_sae",
            )
        point = parse_hook(trained)
        if point.layer != layer:
            raise CrosslayerError(
                f"the SAE given for layer {layer} reads {trained}",
                f"give it for layer {point.layer}, or give an SAE trained on layer {layer}",
            )
        hook = resid_hook(layer) if sae_on_residual else trained
        model.validate_hooks([hook])
        if sae.cfg.d_in != model.d_model:
            raise CrosslayerError(
                f"the SAE for layer {layer} takes d_in={sae.cfg.d_in}, the model has "
                f"d_model={model.d_model}",
                "use SAEs trained on this model",
            )
        sites[layer] = SaeSite(layer, sae, hook, trained)
    if any(s.mismatched for s in sites.values()):
        warnings.warn(
            "SAEs are read on the residual stream instead of the hook they were trained on "
            "(study B's choice): their latents are out of distribution there",
            stacklevel=2,
        )
    return sites


def _load(spec: SaeSpec, model: LoadedModel) -> Any:
    if isinstance(spec, str | Path):
        return load_sae(str(spec), model=model)
    return spec


def _from_clone(root: Path, model: LoadedModel, layers: list[int], l0_rule: str) -> dict[int, Any]:
    """One SAE per layer from a Gemma Scope 1 clone (``canonical`` else ``l0_rule``, study B's
    pick), 16k wide where the clone has several widths."""
    if not root.is_dir():
        raise CrosslayerError(f"SAE directory {root} not found", "pass a Gemma Scope clone")
    out = {}
    for layer in layers:
        if not (root / f"layer_{layer}").is_dir():
            raise CrosslayerError(
                f"{root} has no layer_{layer}/ folder",
                "clone the layers you ask for, or pass --layers to choose layers it has",
            )
        width = "16k" if (root / f"layer_{layer}" / "width_16k").is_dir() else None
        out[layer] = load_sae(root, model=model, layer=layer, width=width, l0_rule=l0_rule)
    return out


def sequence_reps(
    model: LoadedModel, ids: Sequence[int], layers: Sequence[int], sites: Mapping[int, SaeSite]
) -> dict[str, dict[int, torch.Tensor]]:
    """``{"resid": {L: [T, d_model]}, "sae": {L: [T, d_sae]}}`` in float32 for one sequence."""
    hooks = sorted({resid_hook(x) for x in layers} | {s.hook for s in sites.values()})
    acts = model.run_with_hooks(torch.tensor([list(ids)]), hooks=hooks)
    out: dict[str, dict[int, torch.Tensor]] = {
        "resid": {x: acts[resid_hook(x)][0].float().cpu() for x in layers},
        "sae": {},
    }
    for layer, site in sites.items():
        x = acts[site.hook][0].to(site.sae.device, site.sae.dtype)
        with torch.inference_mode():
            out["sae"][layer] = site.sae.encode(x).float().cpu()
    return out
