"""Run-to-run reproducible CPU numerics, set up before torch computes anything.

Why: without MKL's conditional numerical reproducibility (CNR), MKL chooses its sgemm code
path per call from the CPU and the buffers' memory alignment, so the same matmul on the same
machine can differ in its last bits from one run to the next. On an AMD EPYC with AVX-512 a
resumed store was not byte-identical to an uninterrupted one. With ``MKL_CBWR=AUTO``, MKL fixes
one code path for the CPU at start-up and keeps to it, and with ``MKL_DYNAMIC=FALSE`` it does
not change its thread count at run time; together they make results identical run to run on
one machine for a fixed thread count, on Intel and AMD alike (``AUTO`` and ``COMPATIBLE`` are
the only modes MKL honours on non-Intel CPUs). The cost was measured: BENCHMARKS.md,
"Reproducible numerics".

:func:`configure` runs when ``crosslayer`` is imported, so it covers the console script,
``python -m crosslayer``, torchrun workers (which inherit the environment) and notebooks:

- torch not imported yet: the environment variables are set; MKL reads them when it starts.
- torch imported already: the mode is set through MKL's own ``cbwr_set``, which succeeds
  until MKL has run its first routine. After that MKL keeps its default, and a warning says
  how to get the reproducible mode.

A setting the user made (``MKL_CBWR`` or ``MKL_DYNAMIC`` in the environment) is left alone.
What is in force is recorded in every result's provenance (:func:`state`).

Also here, as the one numerics-wide warning filter: :func:`quiet_csr`, which silences torch's
"beta" warning around its CSR kernels (sparse ``X'F``, the sparse TopK step) and nothing else.

Identity is promised only on the CPU with MKL. On CUDA, or with another BLAS (OpenBLAS on
ARM, Accelerate), results agree to float rounding, not bit for bit: docs/reproducibility.md
gives the tolerance that holds there.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

MODE = "AUTO"  # the CNR branch crosslayer asks for
DYNAMIC = "FALSE"

# MKL's mode codes (mkl_cbwr.h); STRICT is a flag added to a branch.
_CODES = {
    1: "OFF",  # MKL_CBWR_BRANCH_OFF: CNR disabled, MKL's default
    2: "AUTO",
    3: "COMPATIBLE",
    4: "SSE2",
    6: "SSSE3",
    7: "SSE4_1",
    8: "SSE4_2",
    9: "AVX",
    10: "AVX2",
    12: "AVX512",
    14: "AVX512_E1",
    15: "AVX512_E2",
    16: "AVX512_E3",
    17: "AVX512_E4",
    18: "AVX2_E1",
    19: "AVX512_E5",
}
_AUTO = 2  # MKL_CBWR_AUTO, the mode crosslayer sets (MODE)
_STRICT = 0x10000
_ALL = -1  # MKL_CBWR_ALL (~0): ask for the whole mode, flags included
_SUCCESS = 0


@cache
def _mkl() -> ctypes.CDLL | None:
    """torch's own MKL (linked into libtorch_cpu), or None when torch has no MKL."""
    # local: start-up cost (torch: crosslayer imports numerics first)
    import torch

    if not torch.backends.mkl.is_available():
        return None
    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        mkl = ctypes.CDLL(str(lib))  # already loaded by torch: the same handle comes back
        for name in ("mkl_serv_cbwr_get", "mkl_serv_cbwr_set", "MKL_Set_Dynamic"):
            getattr(mkl, name).argtypes = [ctypes.c_int]
        mkl.mkl_serv_get_dynamic.argtypes = []
    except (OSError, AttributeError):  # another platform, or a build without these symbols
        return None
    return mkl


def _mode_name(code: int) -> str:
    branch = _CODES.get(code & ~_STRICT, f"code {code & ~_STRICT}")
    return f"{branch},STRICT" if code & _STRICT else branch


def configure() -> None:
    """Ask MKL for its reproducible mode unless the user chose one (see the module doc)."""
    mine = "MKL_CBWR" not in os.environ
    os.environ.setdefault("MKL_CBWR", MODE)
    dynamic = "MKL_DYNAMIC" not in os.environ
    os.environ.setdefault("MKL_DYNAMIC", DYNAMIC)
    if "torch" not in sys.modules:
        return  # MKL reads the environment when torch first calls it
    mkl = _mkl()
    if mkl is None:
        return
    # the mode first: cbwr_set fails once any other MKL routine has run
    # (configure runs once, on import, so this warns once)
    if mine and mkl.mkl_serv_cbwr_get(_ALL) != _AUTO and mkl.mkl_serv_cbwr_set(_AUTO) != _SUCCESS:
        warnings.warn(
            "crosslayer could not make MKL reproducible (MKL_CBWR=AUTO) because torch "
            "already ran MKL code before crosslayer was imported: results may differ in "
            "their last bits from run to run. Import crosslayer before using torch, or "
            "set MKL_CBWR=AUTO in the environment before starting Python.",
            RuntimeWarning,
            stacklevel=3,
        )
    if dynamic:
        mkl.MKL_Set_Dynamic(0)  # the C entry; mkl_set_dynamic is Fortran's


def state() -> dict[str, str]:
    """What governs run-to-run identity in this process, for provenance.

    ``mkl_cbwr`` is the mode MKL is in (``OFF`` = MKL's default, not reproducible), or
    ``no MKL`` when torch computes without it; ``mkl_dynamic`` whether MKL may change its
    thread count at run time; ``threads`` is torch's intra-op thread count, which identity
    also depends on.
    """
    # local: start-up cost (torch)
    import torch

    out = {"mkl_cbwr": "no MKL", "mkl_dynamic": "no MKL"}
    mkl = _mkl()
    if mkl is not None:
        out["mkl_cbwr"] = _mode_name(mkl.mkl_serv_cbwr_get(_ALL))
        out["mkl_dynamic"] = "TRUE" if mkl.mkl_serv_get_dynamic() else "FALSE"
    return {**out, "threads": str(torch.get_num_threads())}


def identity_promised() -> bool:
    """True when crosslayer promises byte-identical CPU results run to run in this process."""
    return state()["mkl_cbwr"] not in ("OFF", "no MKL")


@contextmanager
def quiet_csr() -> Iterator[None]:
    """torch warns that its CSR support is "beta" on every use: silence that warning only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        yield
