"""Causal LMs with TransformerLens hook-point names.

>>> from crosslayer.model import load_model
>>> lm = load_model()                                   # Gemma 3 270M, cached after once
>>> ids = lm.tokenizer(["The capital of France is"], return_tensors="pt").input_ids
>>> acts = lm.run_with_hooks(ids, hooks=["hook_embed", "blocks.6.hook_resid_post"])
"""

from crosslayer.model.hooks import HookPoint, hook_depth, parse_hook
from crosslayer.model.loading import DEFAULT_MODEL, LoadedModel, cache_root, load_model
from crosslayer.model.splice import splice
from crosslayer.model.tiny import tiny_config, tiny_model, tiny_tokenizer

__all__ = [
    "DEFAULT_MODEL",
    "HookPoint",
    "LoadedModel",
    "cache_root",
    "hook_depth",
    "load_model",
    "parse_hook",
    "splice",
    "tiny_config",
    "tiny_model",
    "tiny_tokenizer",
]
