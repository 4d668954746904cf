"""When and which features emerge: every feature's predictability from every layer.

* :func:`emergence_matrix`: out-of-fold ridge R² (alpha per feature by grouped inner CV) and
  AUROC of every scorable feature from ``hook_embed`` and every ``resid_post`` up to the
  target; one eigendecomposition per layer and training set serves every feature.
* :func:`emergence_layers`: the first layer reaching ``frac`` of a feature's best.
* :func:`taxonomy_scores`, :func:`classify`: token-determined, positional, short-context,
  long-context, from cross-fitted token / position lookups and a k-token context ridge.
* :func:`top_token_stats`: token entropy and top-token share of the top activations.
* :func:`seed_ci`, :func:`paired_difference`: t 95% CIs over seeds, and paired by seed.
* :mod:`.plots`: heatmap, emergence-layer distribution, emergence vs token-determinedness.

Definitions: ``docs/metrics.md``, section "Emergence".
"""

from crosslayer.crossfit import auroc_of
from crosslayer.emergence.interpret import TopTokenStats, top_token_stats
from crosslayer.emergence.layer import CHANCE, EmergenceLayers, emergence_layers
from crosslayer.emergence.matrix import EMERGENCE_ALPHAS, EmergenceMatrix, emergence_matrix
from crosslayer.emergence.seeds import paired_difference, seed_ci
from crosslayer.emergence.taxonomy import (
    CLASSES,
    UNSCORED,
    TaxonomyScores,
    across_seeds,
    class_counts,
    classify,
    context_design,
    principal_components,
    taxonomy_scores,
)

__all__ = [
    "CHANCE",
    "CLASSES",
    "EMERGENCE_ALPHAS",
    "UNSCORED",
    "EmergenceLayers",
    "EmergenceMatrix",
    "TaxonomyScores",
    "TopTokenStats",
    "across_seeds",
    "auroc_of",
    "class_counts",
    "classify",
    "context_design",
    "emergence_layers",
    "emergence_matrix",
    "paired_difference",
    "principal_components",
    "seed_ci",
    "taxonomy_scores",
    "top_token_stats",
]
