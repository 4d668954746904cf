"""``load_sae(spec)``: one entry point for every SAE file format we meet, giving sae-lens SAEs.

The SAE object is always a sae-lens class (``JumpReLUSAE``, ``TopKSAE``, a transcoder, ...),
so encode/decode are sae-lens's code. What we write ourselves is only the reading of files:

- sae-lens's Gemma Scope loaders fetch through ``hf_hub_download`` and, for Gemma Scope 2,
  make an HTTP request for tensor shapes even when the weights are cached. Here they must work
  from local files with no network, so we read ``params.npz`` / ``params.safetensors``
  ourselves and build the same config dict and state dict those loaders build (same hook
  names, same embedding-SAE rescaling, same key renames).
- We validate keys, shapes and finiteness first, so a bad file is one clear error rather than
  a shape crash deep inside torch.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file

from crosslayer import hub
from crosslayer.device import resolve_device
from crosslayer.errors import CrosslayerError, DataError
from crosslayer.sae import gemma_scope as gs

if TYPE_CHECKING:
    from sae_lens import SAE

    from crosslayer.model import LoadedModel

# Hooks whose width is the model's d_model; any other hook (hook_z, hook_mlp_in) has no
# d_model check here, and the model's own validate_hooks rejects it if it cannot run it.
_D_MODEL_KINDS = (
    "hook_embed",
    "hook_resid_pre",
    "hook_resid_post",
    "hook_mlp_out",
    "hook_attn_out",
)


def load_sae(
    spec: str | os.PathLike[str],
    *,
    model: LoadedModel | None = None,
    device: str | torch.device | None = None,
    hook: str | None = None,
    layer: int | None = None,
    width: str | None = None,
    l0_rule: str = "closest_100",
    derived_ok: bool = False,
) -> SAE[Any]:
    """Load an SAE as a sae-lens ``SAE`` with ``sae.cfg.metadata.hook_name`` set.

    ``spec`` is one of:

    - a directory saved by sae-lens (``cfg.json`` + ``sae_weights.safetensors``), e.g. one
      written by :func:`crosslayer.train_sae`;
    - a Gemma Scope 1 ``params.npz`` (or the folder holding it);
    - a Gemma Scope 2 ``params.safetensors`` (or its folder; ``config.json`` beside it is read);
    - a local Gemma Scope 1 clone: ``layer_{L}/width_{W}`` folder, or the clone root with
      ``layer=`` and ``width=``; ``canonical/`` wins, else ``l0_rule`` picks the average L0
      (``"closest_100"``, ``"min_ge_60"`` as in study B, or a number);
    - a SAELens ``release/sae_id`` such as ``gemma-scope-2b-pt-res-canonical/layer_20/width_16k/
      canonical``: read from the local Hugging Face cache when there, else downloaded.

    ``hook`` overrides (or supplies, for files outside a Gemma Scope folder) the hook name.
    With ``model``, the hook and input width are checked against it, and an SAE that reads a
    derived input (study A's residual and placebo SAEs: :func:`derived_input`) is an error
    unless ``derived_ok`` says the caller feeds it that input; overriding its ``hook``
    warns.
    """
    dev = resolve_device(device)
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.exists():
        sae = _load_path(path, dev, layer=layer, width=width, l0_rule=l0_rule)
        sae.cfg.metadata.source = str(path.resolve())
    else:
        sae = _load_release(text, dev)
    if hook is not None:
        if derived_input(sae) is not None and not derived_ok:
            warnings.warn(
                f"{_derived_problem(sae)}; reading it on {hook} gives out-of-distribution latents",
                DerivedInputWarning,
                stacklevel=2,
            )
        sae.cfg.metadata.hook_name = hook
    if model is not None:
        check_against_model(sae, model, derived_ok=derived_ok)
    return sae


class DerivedInputWarning(UserWarning):
    """An SAE trained on a derived input (residuals) is about to be read on a raw hook."""


def derived_input(sae: SAE[Any]) -> dict[str, Any] | None:
    """What the SAE reads when it is not its hook's activations (``crosslayer_input`` in its
    ``cfg.json`` metadata, written by :func:`crosslayer.train_sae` ``reads=``), else None."""
    reads = getattr(sae.cfg.metadata, "crosslayer_input", None)
    if not isinstance(reads, dict) or reads.get("kind", "activations") == "activations":
        return None
    return reads


def _derived_problem(sae: SAE[Any]) -> str:
    reads = derived_input(sae) or {}
    hook = sae.cfg.metadata.hook_name
    what = reads.get("definition") or (
        f"{hook} - {reads.get('transcoder', 'transcoder')}({reads.get('source_hook', 'source')})"
    )
    return f"this SAE reads {reads.get('kind')} input ({what}), not the raw activations at {hook}"


def check_against_model(sae: SAE[Any], model: LoadedModel, *, derived_ok: bool = False) -> None:
    """Raise a one-line error when the SAE cannot read from ``model`` (hook or width), or
    when it reads a derived input (:func:`derived_input`) and ``derived_ok`` is not set."""
    if derived_input(sae) is not None and not derived_ok:
        raise CrosslayerError(
            _derived_problem(sae),
            "feed it that input (study A computes it) and pass derived_ok=True, or use the "
            "baseline SAE on the raw hook",
        )
    hook = sae.cfg.metadata.hook_name
    if not hook:
        raise CrosslayerError(
            "the SAE does not say which hook it reads (no hook name in its config or path)",
            "pass hook='blocks.L.hook_resid_post' (CLI: --hook)",
        )
    model.validate_hooks([hook])
    if hook.endswith(_D_MODEL_KINDS) and sae.cfg.d_in != model.d_model:
        raise CrosslayerError(
            f"SAE input width d_in={sae.cfg.d_in} does not match the model's d_model="
            f"{model.d_model} at {hook}",
            f"use an SAE trained on {model.spec} (this one says model "
            f"{sae.cfg.metadata.model_name or 'unknown'})",
        )


# -- local files ------------------------------------------------------------------------------


def _load_path(path: Path, dev: torch.device, **pick: Any) -> SAE[Any]:
    if path.is_file():
        if path.suffix == ".npz":
            return load_gemma_scope_1(path, dev)
        if path.suffix == ".safetensors" and path.name != "sae_weights.safetensors":
            return load_gemma_scope_2(path, dev)
        return _load_path(path.parent, dev, **pick)
    if (path / "cfg.json").is_file():
        return load_sae_lens_dir(path, dev)
    if (path / "params.npz").is_file():
        return load_gemma_scope_1(path / "params.npz", dev)
    if (path / "params.safetensors").is_file():
        return load_gemma_scope_2(path / "params.safetensors", dev)
    width_dir = _width_dir(path, pick["layer"], pick["width"])
    return load_gemma_scope_1(gs.pick_sae_dir(width_dir, pick["l0_rule"]) / "params.npz", dev)


def _width_dir(path: Path, layer: int | None, width: str | None) -> Path:
    """``layer_{L}/width_{W}`` inside a Gemma Scope 1 clone (``path`` may already be it)."""
    if any(p.name == "canonical" or p.name.startswith("average_l0_") for p in path.iterdir()):
        return path
    layers = sorted(p.name for p in path.iterdir() if p.name.startswith("layer_"))
    if not layers:
        raise CrosslayerError(
            f"{path} is not an SAE: no cfg.json, params.npz, params.safetensors or layer_*/",
            "pass a sae-lens folder, a Gemma Scope params file or a Gemma Scope clone",
        )
    if layer is None or not (path / f"layer_{layer}").is_dir():
        raise CrosslayerError(
            f"{path} is a Gemma Scope clone; which layer? (have {', '.join(layers[:8])}...)",
            "pass layer=L (CLI: --layer) with one of the layers present",
        )
    widths = sorted(p.name.removeprefix("width_") for p in (path / f"layer_{layer}").iterdir())
    if width is None and len(widths) == 1:
        width = widths[0]
    if width is None or width not in widths:
        raise CrosslayerError(
            f"width {width!r} not in {path / f'layer_{layer}'} (have {', '.join(widths)})",
            "pass width= one of those, e.g. width='16k'",
        )
    return path / f"layer_{layer}" / f"width_{width}"


def load_sae_lens_dir(path: Path, dev: torch.device) -> SAE[Any]:
    """A folder written by ``SAE.save_model`` / :func:`crosslayer.train_sae`."""
    # local: start-up cost (sae-lens: plans check specs without it)
    from sae_lens import SAE

    if not (path / "sae_weights.safetensors").is_file():
        raise DataError(
            f"{path} has cfg.json but no sae_weights.safetensors",
            "copy the whole SAE folder (both files)",
        )
    try:
        sae = SAE.load_from_disk(path, device=str(dev))
    except (KeyError, ValueError, RuntimeError, json.JSONDecodeError) as e:
        raise DataError(
            f"cannot read SAE in {path}: {e}".splitlines()[0],
            "re-save it with sae-lens >= 6 or re-train it",
        ) from e
    _check_finite({k: v.detach().cpu().numpy() for k, v in sae.state_dict().items()}, path)
    return sae


def load_gemma_scope_1(path: Path, dev: torch.device) -> SAE[Any]:
    """Gemma Scope 1 ``params.npz``: W_enc [d, n], W_dec [n, d], b_enc, b_dec [d], threshold [n].

    Same config as sae-lens's ``get_gemma_2_config_from_hf``: JumpReLU, no b_dec subtracted
    from the input, and embedding SAEs rescaled by sqrt(d) the way
    ``gemma_2_sae_huggingface_loader`` does (W_enc / sqrt(d), W_dec * sqrt(d)).
    """
    try:
        with np.load(path) as f:
            raw = {k: np.asarray(f[k]) for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # truncated or not a zip
        raise DataError(f"cannot read {path} as .npz: {e}", "re-download the file") from e
    # sae-lens renames lower-case w_ keys the same way
    arrays = {("W_" + k[2:] if k.startswith("w_") else k): v for k, v in raw.items()}
    d, n = _check_shapes(arrays, path, ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"))
    info = gs.gemma_scope_1_info(path)
    state = {
        k: torch.from_numpy(arrays[k].astype(np.float32))
        for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    }
    if info["embedding"]:
        state["W_enc"] = state["W_enc"] / math.sqrt(d)
        state["W_dec"] = state["W_dec"] * math.sqrt(d)
    metadata = {
        "hook_name": info["hook_name"],
        "model_name": info["model_name"],
        "format": "gemma_scope_1_npz",
        "gemma_scope_folder": info.get("folder"),
        "average_l0": info["average_l0"],
        "neuronpedia_id": gs.neuronpedia_id_for(info["repo"], info.get("folder")),  # type: ignore[arg-type]
    }
    cfg = {"architecture": "jumprelu", "d_in": d, "d_sae": n, "apply_b_dec_to_input": False}
    return _build(cfg, state, metadata, dev)


def load_gemma_scope_2(path: Path, dev: torch.device) -> SAE[Any]:
    """Gemma Scope 2 ``params.safetensors`` (lower-case ``w_enc`` ...), with ``config.json``.

    Transcoders (``w_dec`` [n, d_out] with d_out from another hook) become sae-lens
    ``JumpReLUTranscoder``; an ``affine_skip_connection`` [d_in, d_out] becomes
    ``JumpReLUSkipTranscoder.W_skip`` [d_out, d_in], as in ``gemma_3_sae_huggingface_loader``.
    """
    try:
        raw = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise DataError(f"cannot read {path} as safetensors: {e}", "re-download the file") from e
    raw_cfg: dict[str, Any] = {}
    cfg_file = path.parent / "config.json"
    if cfg_file.is_file():
        try:
            raw_cfg = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{cfg_file} is not valid JSON: {e}", "re-download it") from e
        if raw_cfg.get("architecture", "jump_relu") != "jump_relu":
            raise DataError(
                f"{cfg_file} says architecture {raw_cfg.get('architecture')!r}",
                "only Gemma Scope 2 JumpReLU SAEs/transcoders are supported",
            )
    arrays = {k.replace("w_", "W_", 1) if k in ("w_enc", "w_dec") else k: v for k, v in raw.items()}
    keys = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    d_in = arrays["W_enc"].shape[0] if arrays.get("W_enc") is not None else 0
    d_out = arrays["W_dec"].shape[-1] if arrays.get("W_dec") is not None else 0
    transcoder = (
        "affine_skip_connection" in arrays or d_out != d_in or "hf_hook_point_out" in raw_cfg
    )
    d, n = _check_shapes(arrays, path, keys, d_out=d_out if transcoder else None)
    hook_in, hook_out = gs.hooks_from_hf_points(
        raw_cfg.get("hf_hook_point_in"), raw_cfg.get("hf_hook_point_out")
    )
    if hook_in is None:
        hook_in, hook_out = gs.gemma_scope_2_hook_from_path(path)
    state = {k: torch.from_numpy(np.ascontiguousarray(arrays[k], dtype=np.float32)) for k in keys}
    cfg: dict[str, Any] = {
        "architecture": "jumprelu",
        "d_in": d,
        "d_sae": n,
        "apply_b_dec_to_input": False,
    }
    if transcoder:
        cfg.update(architecture="jumprelu_transcoder", d_out=d_out)
        if "affine_skip_connection" in arrays:
            skip = arrays["affine_skip_connection"]
            if skip.shape != (d, d_out):
                raise DataError(
                    f"{path}: affine_skip_connection has shape {skip.shape}, expected {(d, d_out)}",
                    "the file is damaged or not a Gemma Scope 2 transcoder; re-download it",
                )
            _check_finite({"affine_skip_connection": skip}, path)
            state["W_skip"] = torch.from_numpy(np.ascontiguousarray(skip.T, dtype=np.float32))
            cfg["architecture"] = "jumprelu_skip_transcoder"
    model_name = raw_cfg.get("model_name")
    metadata = {
        "hook_name": hook_in,
        "hook_name_out": hook_out,
        "model_name": model_name,
        "format": "gemma_scope_2_safetensors",
        "hf_hook_name": raw_cfg.get("hf_hook_point_in"),
    }
    return _build(cfg, state, metadata, dev)


def _check_shapes(
    arrays: dict[str, np.ndarray], path: Path, keys: tuple[str, ...], d_out: int | None = None
) -> tuple[int, int]:
    """Keys present, shapes consistent with W_enc [d, n], finite values; return (d, n)."""
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataError(
            f"{path} lacks {', '.join(missing)} (has {', '.join(sorted(arrays)) or 'nothing'})",
            "use a complete Gemma Scope params file (W_enc, W_dec, b_enc, b_dec, threshold)",
        )
    if arrays["W_enc"].ndim != 2:
        raise DataError(
            f"{path}: W_enc has shape {arrays['W_enc'].shape}, expected [d_in, d_sae]",
            "the file is damaged; re-download it",
        )
    d, n = arrays["W_enc"].shape
    out = d if d_out is None else d_out
    want = {"W_dec": (n, out), "b_enc": (n,), "b_dec": (out,), "threshold": (n,)}
    for key, shape in want.items():
        if arrays[key].shape != shape:
            raise DataError(
                f"{path}: {key} has shape {arrays[key].shape}, expected {shape} "
                f"(from W_enc {arrays['W_enc'].shape})",
                "the file is damaged or mixes two SAEs; re-download it",
            )
    _check_finite({k: arrays[k] for k in keys}, path)
    return int(d), int(n)


def _check_finite(arrays: dict[str, np.ndarray], path: Path) -> None:
    for key, value in arrays.items():
        if not np.isfinite(value).all():
            raise DataError(
                f"{path}: {key} contains NaN or infinite values",
                "the file is damaged (or training diverged); re-download or re-train it",
            )


def _build(
    cfg: dict[str, Any], state: dict[str, torch.Tensor], metadata: dict[str, Any], dev: torch.device
) -> SAE[Any]:
    """Instantiate the sae-lens class registered for ``cfg['architecture']`` with ``state``."""
    # local: start-up cost (sae-lens)
    from sae_lens.registry import get_sae_class

    sae_cls, cfg_cls = get_sae_class(cfg["architecture"])
    config = cfg_cls.from_dict(
        {
            **cfg,
            "dtype": "float32",
            "device": str(dev),
            "metadata": {k: v for k, v in metadata.items() if v is not None},
        }
    )
    sae = sae_cls(config)
    sae.load_state_dict(state)
    return sae.to(dev)


# -- SAELens releases -------------------------------------------------------------------------


def list_releases() -> list[str]:
    """Every SAELens release name known offline (from sae-lens's ``pretrained_saes.yaml``)."""
    # local: start-up cost (sae-lens)
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return sorted(get_pretrained_saes_directory())


def list_sae_ids(release: str) -> list[str]:
    """The SAE ids of one SAELens release."""
    # local: start-up cost (sae-lens)
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        raise _unknown("release", release, list(directory), "crosslayer.sae.list_releases()")
    return list(directory[release].saes_map)


def _unknown(what: str, name: str, known: list[str], how: str) -> CrosslayerError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" (closest: {', '.join(close)})" if close else ""
    return CrosslayerError(
        f"unknown SAE {what} {name!r}{hint}, and no such file or folder",
        f"pass a local SAE path, or list valid names with {how}",
    )


def _lookup(spec: str) -> tuple[str, str, Any]:
    """``release/sae_id`` → (release, sae_id, sae-lens's directory entry), or a one-line error."""
    # local: start-up cost (sae-lens)
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    release, _, sae_id = spec.partition("/")
    if release not in directory:
        raise _unknown("release", release, list(directory), "crosslayer.sae.list_releases()")
    lookup = directory[release]
    if sae_id not in lookup.saes_map:
        raise _unknown(
            f"id in {release}",
            sae_id,
            list(lookup.saes_map),
            f"crosslayer.sae.list_sae_ids({release!r})",
        )
    return release, sae_id, lookup


def check_sae_spec(spec: str) -> None:
    """What ``load_sae(spec)`` needs, checked without reading weights: an existing path, or a
    known release/id that is in the local hub cache or can be downloaded now."""
    if Path(spec).expanduser().exists():
        return
    release, sae_id, lookup = _lookup(spec)
    # local: start-up cost (huggingface_hub)
    from huggingface_hub import try_to_load_from_cache

    folder = lookup.saes_map[sae_id]
    names = {"gemma_2": "params.npz", "gemma_3": "params.safetensors"}
    name = names.get(lookup.conversion_func, "sae_weights.safetensors")
    if not isinstance(try_to_load_from_cache(lookup.repo_id, f"{folder}/{name}"), str):
        _require_hub(release, sae_id)


def _require_hub(release: str, sae_id: str) -> None:
    hub.require_hub(
        f"SAE {release}/{sae_id} is not in the local Hugging Face cache",
        "download it on a machine with network (huggingface-cli download) and copy the HF "
        "cache (~/.cache/huggingface) here, or pass the SAE's local path",
    )


def _load_release(spec: str, dev: torch.device) -> SAE[Any]:
    """``release/sae_id``: local HF cache first (no network), else sae-lens's hub loader."""
    release, sae_id, lookup = _lookup(spec)
    folder = lookup.saes_map[sae_id]
    cached = _from_hf_cache(lookup.repo_id, folder, lookup.conversion_func, dev)
    if cached is None:
        cached = _from_hub(release, sae_id, dev)
    meta = cached.cfg.metadata
    meta.release, meta.sae_id = release, sae_id
    meta.neuronpedia_id = lookup.neuronpedia_id.get(sae_id) or meta.neuronpedia_id
    meta.model_name = meta.model_name or lookup.model
    return cached


def _from_hf_cache(
    repo_id: str, folder: str, conversion: str | None, dev: torch.device
) -> SAE[Any] | None:
    # local: start-up cost (huggingface_hub)
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> Path | None:
        hit = try_to_load_from_cache(repo_id, f"{folder}/{name}")
        return Path(hit) if isinstance(hit, str) else None

    if conversion == "gemma_2" and (npz := cached("params.npz")):
        return load_gemma_scope_1(npz, dev)
    if conversion == "gemma_3" and (st := cached("params.safetensors")):
        cached("config.json")  # sits beside params.safetensors in the snapshot when cached
        return load_gemma_scope_2(st, dev)
    if conversion is None and (cfg := cached("cfg.json")) and cached("sae_weights.safetensors"):
        return load_sae_lens_dir(cfg.parent, dev)
    return None


def _from_hub(release: str, sae_id: str, dev: torch.device) -> SAE[Any]:
    _require_hub(release, sae_id)
    # local: start-up cost (sae-lens)
    from sae_lens import SAE

    try:
        with hub.quiet():
            return SAE.from_pretrained(release, sae_id, device=str(dev))
    except Exception as e:  # network errors come in many types (requests, httpx, OSError)
        raise CrosslayerError(
            f"could not download {release}/{sae_id}: {type(e).__name__}: {e}".splitlines()[0],
            "check the network, or download the files and pass their local path",
        ) from e
