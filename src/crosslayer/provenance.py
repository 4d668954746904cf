"""What produced a result: package versions, platform and a stable config hash."""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from importlib import metadata
from typing import Any

from crosslayer import numerics

_PACKAGES = (
    "crosslayer",
    "torch",
    "transformers",
    "sae-lens",
    "numpy",
    "scikit-learn",
    "safetensors",
    "gguf",
)


def versions() -> dict[str, str]:
    """Versions of Python and the packages whose behaviour changes our numbers, and the
    numerical mode they ran in (MKL's reproducibility branch, thread count: see
    :mod:`crosslayer.numerics`)."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    state = numerics.state()
    out["mkl_cbwr"] = state["mkl_cbwr"]
    out["mkl_dynamic"] = state["mkl_dynamic"]
    out["torch_threads"] = state["threads"]
    return out


def config_hash(config: dict[str, Any]) -> str:
    """A short, stable hash of a JSON-serialisable config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
