"""The activation store: collect hook activations once, read them many times.

>>> store = collect(lm, ["hook_embed", "blocks.12.hook_resid_post"], corpus="builtin:wiki",
...                 n_tokens=200_000, out="runs/demo")
>>> store = open_store("runs/demo")
>>> for batch in store.iter_batches(["hook_embed"], split="train", batch_size=4096): ...

Format: ``docs/store_format.md``. Export to SAELens's cached-activations format:
:func:`export_saelens`.
"""

from crosslayer.store.collect import CollectConfig, StoreSpec, collect, collect_together
from crosslayer.store.export import export_saelens
from crosslayer.store.format import VerifyReport, verify_store
from crosslayer.store.reader import ActivationStore, ShardedArray, open_store

__all__ = [
    "ActivationStore",
    "CollectConfig",
    "ShardedArray",
    "StoreSpec",
    "VerifyReport",
    "collect",
    "collect_together",
    "export_saelens",
    "open_store",
    "verify_store",
]
