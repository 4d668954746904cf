"""SAEs: load any Gemma Scope / sae-lens SAE, train JumpReLU or TopK SAEs, evaluate them.

Every SAE here is a ``sae_lens`` object (``sae.encode``, ``sae.decode``, ``sae.cfg``), with
``sae.cfg.metadata.hook_name`` naming the TransformerLens hook it reads. See docs/saes.md.
"""

from __future__ import annotations

from crosslayer.sae.evaluate import evaluate_sae
from crosslayer.sae.gemma_scope import neuronpedia_url, pick_sae_dir
from crosslayer.sae.load import check_against_model, list_releases, list_sae_ids, load_sae
from crosslayer.sae.train import SAETrainConfig, train_sae

__all__ = [
    "SAETrainConfig",
    "check_against_model",
    "evaluate_sae",
    "list_releases",
    "list_sae_ids",
    "load_sae",
    "neuronpedia_url",
    "pick_sae_dir",
    "train_sae",
]
