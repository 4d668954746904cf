"""crosslayer: how much of a late layer is already predictable from an early one.

The public API is imported lazily so that ``crosslayer --help`` and light users do not
pay for importing torch and transformers.

    >>> import crosslayer
    >>> lm = crosslayer.load_model("gemma-3-270m")
    >>> store = crosslayer.collect(lm, ["hook_embed", "blocks.12.hook_resid_post"],
    ...                            corpus="builtin:wiki", n_tokens=50_000, out="runs/demo")
"""

from __future__ import annotations

import importlib
from typing import Any

from crosslayer import numerics as _numerics

# Before torch computes anything: MKL's reproducible mode (see crosslayer.numerics).
_numerics.configure()

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "CrosslayerError": "crosslayer.errors",
    "LoadedModel": "crosslayer.model",
    "load_model": "crosslayer.model",
    "load_corpus": "crosslayer.corpus",
    "collect": "crosslayer.store",
    "open_store": "crosslayer.store",
    "ActivationStore": "crosslayer.store",
    "load_sae": "crosslayer.sae",
    "train_sae": "crosslayer.sae",
    "evaluate_sae": "crosslayer.sae",
    "AffineTranscoder": "crosslayer.transcoder",
    "FeatureProbes": "crosslayer.probes",
    "run_study_a": "crosslayer.experiments.study_a",
    "load_run": "crosslayer.runs",
    "LoadedRun": "crosslayer.runs",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'crosslayer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
