"""Gemma Scope conventions: where an SAE reads (hook name), which SAE to pick, Neuronpedia ids.

Gemma Scope files carry no hook name: it is encoded in the repository and folder names
(``gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71``,
``gemma-scope-2-270m-pt/resid_post/layer_12_width_16k_l0_medium``) or, for Gemma Scope 2, in
``config.json`` as a Hugging Face module path (``model.layers.12.output``). This module turns
those into TransformerLens hook names with the same rules as sae-lens's Gemma loaders
(``get_gemma_2_config_from_hf`` / ``get_gemma_3_config_from_hf``), without their hub calls.
"""

from __future__ import annotations

import re
from pathlib import Path

from crosslayer.errors import CrosslayerError

_L0_DIR = re.compile(r"average_l0_(\d+)")
_LAYER = re.compile(r"layer_(\d+)")
_WIDTH = re.compile(r"width_(\d+[km]?)")
_HF_RESID = re.compile(r"model\.layers\.(\d+)\.output")
_HF_MLP_OUT = re.compile(r"model\.layers\.(\d+)\.post_feedforward_layernorm\.output")
_HF_MLP_IN = re.compile(r"model\.layers\.(\d+)\.pre_feedforward_layernorm\.output")
_HF_ATTN_Z = re.compile(r"model\.layers\.(\d+)\.self_attn\.o_proj\.input")
# Gemma Scope 1 repositories name the Gemma 2 model by size (sae-lens's model_params table).
_GS1_MODELS = {
    "2b-it": "gemma-2-2b-it",
    "9b-it": "gemma-2-9b-it",
    "27b-it": "gemma-2-27b-it",
    "2b": "gemma-2-2b",
    "9b": "gemma-2-9b",
    "27b": "gemma-2-27b",
}

L0Rule = str  # "closest_100" (canonical releases) | "min_ge_60" (study B) | "<m>" exact


def repo_name(path: Path) -> str | None:
    """The Gemma Scope repository name in a path: a clone dir or a hub-cache ``models--`` dir."""
    for part in reversed(path.resolve().parts):
        name = part.removeprefix("models--google--")
        if name.startswith("gemma-scope"):
            return name
    return None


def gemma_scope_1_info(path: Path) -> dict[str, object]:
    """Hook name, model, layer, width and L0 encoded in a Gemma Scope 1 ``params.npz`` path.

    Kind comes from the repository name (``-res``, ``-mlp``, ``-att``), as in sae-lens; a path
    outside a recognisable clone gives no hook name and the caller must be told one.
    """
    text = path.resolve().as_posix()
    repo = repo_name(path) or ""
    layer_m = _LAYER.search(text)
    width_m = _WIDTH.search(text)
    l0_m = _L0_DIR.search(text)
    info: dict[str, object] = {
        "layer": int(layer_m.group(1)) if layer_m else None,
        "width": width_m.group(1) if width_m else None,
        "average_l0": int(l0_m.group(1)) if l0_m else None,
        "repo": repo or None,
        "embedding": "/embedding/" in text,
    }
    size = next((k for k in _GS1_MODELS if f"-{k}-" in f"{repo}-"), None)
    info["model_name"] = _GS1_MODELS[size] if size else None
    hook = None
    if info["embedding"] and "-res" in repo:
        hook = "hook_embed"
    elif info["layer"] is not None and "-res" in repo:
        hook = f"blocks.{info['layer']}.hook_resid_post"
    elif info["layer"] is not None and "-mlp" in repo:
        hook = f"blocks.{info['layer']}.hook_mlp_out"
    elif info["layer"] is not None and "-att" in repo:
        hook = f"blocks.{info['layer']}.attn.hook_z"
    info["hook_name"] = hook
    if repo and info["layer"] is not None and info["width"]:
        kind = "res" if "-res" in repo else "mlp" if "-mlp" in repo else "att"
        rel = f"layer_{info['layer']}/width_{info['width']}/"
        rel += "canonical" if path.parent.name == "canonical" else path.parent.name
        info["folder"] = rel
        info["kind"] = kind
    return info


def hooks_from_hf_points(
    hook_in: str | None, hook_out: str | None
) -> tuple[str | None, str | None]:
    """TransformerLens names for Gemma Scope 2 ``hf_hook_point_in/out`` (same map as sae-lens)."""

    def one(point: str | None) -> str | None:
        if not point:
            return None
        for pattern, tl in (
            (_HF_RESID, "hook_resid_post"),
            (_HF_MLP_OUT, "hook_mlp_out"),
            (_HF_MLP_IN, "hook_mlp_in"),
            (_HF_ATTN_Z, "attn.hook_z"),
        ):
            m = pattern.fullmatch(point)
            if m:
                return f"blocks.{m.group(1)}.{tl}"
        return None

    return one(hook_in), one(hook_out)


def gemma_scope_2_hook_from_path(path: Path) -> tuple[str | None, str | None]:
    """Hook names from a Gemma Scope 2 folder, e.g. ``resid_post/layer_12_width_16k_l0_medium``."""
    text = path.resolve().as_posix()
    m = _LAYER.search(text)
    if m is None:
        return None, None
    layer = m.group(1)
    if "/resid_post/" in text or "resid_post" in path.parent.name:
        return f"blocks.{layer}.hook_resid_post", None
    if "/mlp_out/" in text:
        return f"blocks.{layer}.hook_mlp_out", None
    if "/attn_out/" in text:
        return f"blocks.{layer}.attn.hook_z", None
    if "transcoder" in text:
        return f"blocks.{layer}.hook_mlp_in", f"blocks.{layer}.hook_mlp_out"
    return None, None


def pick_sae_dir(width_dir: Path, rule: L0Rule = "closest_100") -> Path:
    """Pick one SAE folder in ``layer_{L}/width_{W}/`` of a Gemma Scope 1 clone.

    ``canonical`` wins when present (as in the canonical releases and in study B). Otherwise:
    ``closest_100`` takes the average L0 closest to 100 (sae-lens's canonical releases were
    chosen that way; ties go to the smaller L0), ``min_ge_60`` the smallest L0 >= 60 (study B),
    and a number picks ``average_l0_{number}`` exactly.
    """
    if (width_dir / "canonical" / "params.npz").is_file():
        return width_dir / "canonical"
    found = {
        int(m.group(1)): d
        for d in width_dir.iterdir()
        if (m := _L0_DIR.fullmatch(d.name)) and (d / "params.npz").is_file()
    }
    if not found:
        raise CrosslayerError(
            f"{width_dir} holds no canonical/ or average_l0_*/params.npz",
            "point at a layer_{L}/width_{W} folder of a Gemma Scope clone",
        )
    available = ", ".join(str(m) for m in sorted(found))
    if rule == "closest_100":
        return found[min(found, key=lambda m: (abs(m - 100), m))]
    if rule == "min_ge_60":
        above = [m for m in found if m >= 60]
        if not above:
            raise CrosslayerError(
                f"no SAE with average L0 >= 60 in {width_dir} (have {available})",
                "use l0_rule='closest_100' or pick an average L0 explicitly",
            )
        return found[min(above)]
    if rule.isdigit() and int(rule) in found:
        return found[int(rule)]
    raise CrosslayerError(
        f"unknown L0 rule {rule!r} for {width_dir} (average L0s here: {available})",
        "use 'closest_100', 'min_ge_60' or one of the listed numbers",
    )


def neuronpedia_id_for(repo: str | None, folder: str | None) -> str | None:
    """Neuronpedia id of a Gemma Scope SAE, from sae-lens's offline ``pretrained_saes.yaml``.

    Matches the repository and the SAE's folder (``layer_20/width_16k/average_l0_71``) against
    every release; Neuronpedia hosts dashboards for the canonical SAEs only, so another L0
    of the same layer gets ``None`` rather than a link to a different SAE's latents.
    """
    if not repo or not folder:
        return None
    # local: start-up cost (sae-lens)
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    for lookup in get_pretrained_saes_directory().values():
        if lookup.repo_id.split("/")[-1] != repo:
            continue
        for sae_id, sae_path in lookup.saes_map.items():
            npid = lookup.neuronpedia_id.get(sae_id)
            if npid and (sae_path == folder or sae_id == folder):
                return npid
    return None


def neuronpedia_url(sae_or_id: object, index: int) -> str:
    """Link to a latent's Neuronpedia dashboard, e.g.
    ``https://neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/1234``.

    Accepts a Neuronpedia id (``gemma-2-2b/20-gemmascope-res-16k``) or an SAE whose
    ``cfg.metadata.neuronpedia_id`` was set by :func:`crosslayer.load_sae`.
    """
    npid = sae_or_id if isinstance(sae_or_id, str) else None
    if npid is None:
        cfg = getattr(sae_or_id, "cfg", None)
        npid = getattr(getattr(cfg, "metadata", None), "neuronpedia_id", None)
    if not npid:
        raise CrosslayerError(
            "this SAE has no Neuronpedia id (only canonical Gemma Scope SAEs have dashboards)",
            "load a canonical Gemma Scope SAE or pass an id ('gemma-2-2b/20-gemmascope-res-16k')",
        )
    return f"https://neuronpedia.org/{npid}/{int(index)}"
