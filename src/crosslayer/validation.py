"""Array checks at the edge, modelled on scikit-learn's ``check_array``: one place, one message.

Estimators and metrics validate their inputs here once, where the user's arrays come in, and
then trust them: a wrong shape, a NaN or a row count that does not match gives one
:class:`~crosslayer.errors.CrosslayerError` with the fix. Works on numpy arrays, memmaps and
torch tensors (anything with ``.shape``) without copying them, except for the optional
``finite`` check, which reads the array.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from crosslayer.errors import CrosslayerError

ArrayLike = Any  # numpy array, np.memmap, torch tensor or anything np.asarray accepts


def _all_finite(a: ArrayLike) -> bool:
    if isinstance(a, torch.Tensor):
        return bool(torch.isfinite(a).all())
    return bool(np.isfinite(np.asarray(a)).all())


def check_array(
    name: str,
    a: ArrayLike,
    *,
    n_rows: int | None = None,
    n_cols: int | None = None,
    like: str = "X",
    finite: bool = False,
) -> tuple[int, int]:
    """Validate that ``a`` is a non-empty 2-D array ``[n_tokens, d]``; returns its shape.

    ``n_rows`` / ``n_cols``: the rows / columns it must have, those of the array called
    ``like`` (one row per token, in the same order). ``finite``: also refuse NaN and inf.
    """
    shape = getattr(a, "shape", None)
    if shape is None or len(shape) != 2:
        got = "no shape" if shape is None else f"shape {tuple(shape)}"
        raise CrosslayerError(
            f"{name} must be a 2-D array [n_tokens, d], got {got}",
            f"pass {name} as an array of shape [n_tokens, d]",
        )
    n, d = int(shape[0]), int(shape[1])
    if n < 1 or d < 1:
        raise CrosslayerError(
            f"{name} is empty (shape {tuple(shape)})",
            "pass at least one token with at least one dimension",
        )
    if n_rows is not None and n != n_rows:
        raise CrosslayerError(
            f"{like} has {n_rows} rows but {name} has {n}",
            "pass arrays with one row per token, in the same order",
        )
    if n_cols is not None and d != n_cols:
        raise CrosslayerError(
            f"{like} has {n_cols} columns but {name} has shape {tuple(shape)}",
            f"pass {name} with the same dimensions as {like} [n_tokens, d]",
        )
    if finite and not _all_finite(a):
        raise CrosslayerError(
            f"{name} contains NaN or infinite values",
            "remove or re-collect the non-finite activations first",
        )
    return n, d


def check_pair(
    X: ArrayLike, Y: ArrayLike, names: tuple[str, str] = ("X", "Y")
) -> tuple[int, int, int]:
    """Validate two row-aligned 2-D arrays; returns ``(n, d_x, d_y)``."""
    n, dx = check_array(names[0], X)
    _, dy = check_array(names[1], Y, n_rows=n, like=names[0])
    return n, dx, dy


def check_length(name: str, v: ArrayLike, n_rows: int, like: str) -> np.ndarray:
    """One value of ``v`` per row of the array ``like`` (``n_rows`` rows): ``v`` flattened."""
    flat = np.asarray(v).reshape(-1)
    if flat.size != n_rows:
        raise CrosslayerError(
            f"{flat.size} {name} for {n_rows} rows of {like}",
            f"pass one of the {name} per row of {like}",
        )
    return flat
