"""Device and dtype selection: CUDA + bf16 when present, else CPU + float32.

bfloat16 on CPU is opt-in (``--model-dtype bfloat16``): fast where the CPU has AVX512-BF16
or AMX (oneDNN's bf16 matmuls), emulated and slow elsewhere, so it is never the default.
Host-to-GPU copies go through :func:`to_device`, which pins and copies without blocking
only when the target is CUDA (pinning needs a CUDA runtime; on CPU it is a no-op).
"""

from __future__ import annotations

import functools
import warnings

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


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively (AVX512-BF16 or AMX, through oneDNN)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Model dtype: bf16 on a CUDA device that supports it, float32 otherwise, unless given.

    An explicit bfloat16 on a CPU without native bf16 works, but slowly: a warning says so.
    """
    if isinstance(dtype, torch.dtype):
        out = dtype
    elif dtype is None or dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    else:
        try:
            out = _DTYPES[dtype]
        except KeyError as e:
            raise CrosslayerError(
                f"unknown dtype {dtype!r}", f"use one of: auto, {', '.join(sorted(_DTYPES))}"
            ) from e
    if out == torch.bfloat16 and device.type == "cpu" and not cpu_has_fast_bf16():
        warnings.warn(
            "bfloat16 on a CPU without AVX512-BF16 or AMX is emulated: expect it slower "
            "than float32",
            stacklevel=2,
        )
    return out


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``: a CPU tensor bound for CUDA is pinned and copied without
    blocking (the copy overlaps the host's next work; kernels on the stream wait for it).

    On CPU nothing is pinned (that needs a CUDA runtime) and a CPU tensor is returned as is.
    """
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
