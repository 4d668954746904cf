"""How much of a late layer is its mean, linear in the current embedding, token identity,
short context, or the rest: out-of-fold by document folds, with document-bootstrap CIs.

* :func:`decompose`: every predictor's out-of-fold EV for any number of layers at once.
* :func:`splice_scores`: what a predictor's output does to the model when it replaces the
  layer (CE loss recovered, KL to the clean next-token distribution).

Definitions: :data:`DEFINITIONS` and ``docs/metrics.md``, section "Layer decomposition".
"""

from crosslayer.decomposition.decompose import Decomposition, decompose, predictor_names
from crosslayer.decomposition.definitions import DEFINITIONS
from crosslayer.decomposition.design import LagDesign, lag_design
from crosslayer.decomposition.scores import bootstrap_weights
from crosslayer.decomposition.splice import SpliceContexts, splice_contexts, splice_scores

__all__ = [
    "DEFINITIONS",
    "Decomposition",
    "LagDesign",
    "SpliceContexts",
    "bootstrap_weights",
    "decompose",
    "lag_design",
    "predictor_names",
    "splice_contexts",
    "splice_scores",
]
