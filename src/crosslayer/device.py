"""Device and dtype selection: CUDA + bf16 when present, else CPU + float32."""

from __future__ import annotations

import torch

from crosslayer.errors import CrosslayerError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return ``device`` as a :class:`torch.device`; ``None``/"auto" picks CUDA if available."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise CrosslayerError(
            f"unknown device {device!r}", "use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CrosslayerError("device 'cuda' requested but no GPU is visible", "use --device cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Model dtype: bf16 on a CUDA device that supports it, float32 otherwise, unless given."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError as e:
        raise CrosslayerError(
            f"unknown dtype {dtype!r}", f"use one of: auto, {', '.join(sorted(_DTYPES))}"
        ) from e
