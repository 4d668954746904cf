"""What produced a result: package versions, platform and a stable config hash."""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from importlib import metadata
from typing import Any

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
    """Versions of Python and the packages whose behaviour changes our numbers."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def config_hash(config: dict[str, Any]) -> str:
    """A short, stable hash of a JSON-serialisable config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
