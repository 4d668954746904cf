"""Per-document sums of a layer's out-of-fold errors, and the EVs and bootstrap CIs from them.

Every predictor's squared errors are summed per (document, dimension) as its predictions are
made, so no prediction matrix is kept. A document bootstrap (resample documents with
replacement: the unit that varies) then costs one ``[B, D] @ [D, m]`` product per predictor.
All resamples are shared by the predictors of a layer, so ``rest = 1 - best`` gets its CI
from the same resamples.

A resample's EV is the estimate's functional with document ``d`` counted ``w_d`` times:
``1 - Σ_d w_d SSE_d / Σ_d w_d SST_d``, where ``SST_d = Σ_{i∈d} (y_i - ȳ)²`` is about the
*full-sample* mean ȳ, fixed like the out-of-fold predictions (with ``w = 1`` it is the
estimate). Re-centring on each resample's own mean would shrink ``SST`` by the resample
mean's spread while the predictions (the ``mean`` predictor's training means included) stay
those of the original folds: a downward bias of the bootstrap against the estimate, large
enough with few documents that the percentile CI of ``mean`` excluded its own estimate.

* ``ev``: ``1 - Σ_ij (y - ŷ)² / Σ_ij (y_ij - ȳ_j)²`` (variance-weighted, SAELens's EV);
* ``ev_standardised``: the same with every dimension scaled to unit variance, i.e. the mean
  over dimensions of ``1 - SSE_j / SST_j`` (a few huge dimensions cannot dominate it);
* ``ev_without_top_dim``: ``ev`` without the dimension of largest variance;
* ``top_dim_share``: that dimension's share of ``Σ_j SST_j``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from crosslayer.crossfit.stats import F64
from crosslayer.metrics import sst_about_pooled_mean


def bootstrap_weights(n_docs: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """``[B, D]`` multinomial counts: how often each document is drawn in each resample."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_docs, size=(n_bootstrap, n_docs))
    w = np.zeros((n_bootstrap, n_docs))
    np.add.at(w, (np.arange(n_bootstrap)[:, None], draws), 1.0)
    return w


def _ci(values: np.ndarray) -> list[float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return [float("nan"), float("nan")]
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]


@dataclass
class LayerScores:
    """Accumulates per-document error sums of one layer's predictors."""

    doc: torch.Tensor  # [n] document index 0 … D-1 of every row
    n_docs: int
    n_doc: torch.Tensor = field(init=False)
    sy: torch.Tensor = field(init=False)
    syy: torch.Tensor = field(init=False)
    sse: dict[str, torch.Tensor] = field(default_factory=dict)

    def set_target(self, rows: np.ndarray, y: np.ndarray) -> None:
        """Add the layer's own per-document sums (call once per block of rows)."""
        if not hasattr(self, "sy"):
            self.n_doc = torch.zeros(self.n_docs, dtype=F64)
            self.sy = torch.zeros(self.n_docs, y.shape[1], dtype=F64)
            self.syy = torch.zeros(self.n_docs, y.shape[1], dtype=F64)
        d = self.doc[torch.as_tensor(rows)]
        t = torch.as_tensor(y).double()
        self.n_doc.index_add_(0, d, torch.ones(len(rows), dtype=F64))
        self.sy.index_add_(0, d, t)
        self.syy.index_add_(0, d, t.square())

    def add(self, name: str, rows: np.ndarray, err: np.ndarray) -> None:
        """Add squared errors ``err [len(rows), m]`` (y - ŷ) of predictor ``name``."""
        if name not in self.sse:
            self.sse[name] = torch.zeros(self.n_docs, err.shape[1], dtype=F64)
        e = torch.as_tensor(err).double()
        self.sse[name].index_add_(0, self.doc[torch.as_tensor(rows)], e.square())

    def draws(self, weights: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per predictor, ``ev`` and ``ev_standardised`` of every resample ``[B]``: the
        estimate's functional with document ``d`` counted ``weights[b, d]`` times (all ones:
        the estimate itself)."""
        W = torch.as_tensor(np.atleast_2d(weights), dtype=F64)
        sst_doc = self._sst_doc()
        live = self._live(sst_doc.sum(0))
        sst_b = W @ sst_doc
        out = {}
        for name, sse_doc in self.sse.items():
            sse_b = W @ sse_doc
            out[name] = (
                self._ev(sse_b, sst_b, live).numpy(),
                self._std(sse_b, sst_b, live).numpy(),
            )
        return out

    def summarise(self, weights: np.ndarray, rest_of: list[str]) -> dict[str, Any]:
        """EVs, CIs and top-dimension figures; ``rest = 1 - max`` over ``rest_of``."""
        out: dict[str, Any] = {}
        sst = self._sst_doc().sum(0)
        live = self._live(sst)
        top = int(sst.argmax())
        keep = live.clone()
        keep[top] = False
        boots = self.draws(weights)
        for name, sse_doc in self.sse.items():
            sse = sse_doc.sum(0)
            ev_b, std_b = boots[name]
            out[name] = {
                "ev": float(self._ev(sse, sst, live)),
                "ev_standardised": float(self._std(sse, sst, live)),
                "ci95": _ci(ev_b),
                "ev_standardised_ci95": _ci(std_b),
                "ev_without_top_dim": float(self._ev(sse, sst, keep)),
            }
        best = [n for n in rest_of if n in out]
        if best:
            ev_b = np.max([boots[n][0] for n in best], axis=0)
            std_b = np.max([boots[n][1] for n in best], axis=0)
            out["rest"] = {
                "ev": 1.0 - max(out[n]["ev"] for n in best),
                "ev_standardised": 1.0 - max(out[n]["ev_standardised"] for n in best),
                "ci95": _ci(1.0 - ev_b),
                "ev_standardised_ci95": _ci(1.0 - std_b),
                "best": max(best, key=lambda n: out[n]["ev"]),
            }
        out["top_dim"] = top
        out["top_dim_share"] = float(sst[top] / sst[live].sum())
        out["n_tokens"] = int(self.n_doc.sum())
        out["n_documents"] = int((self.n_doc > 0).sum())
        return out

    def _sst_doc(self) -> torch.Tensor:
        """``[D, m]`` per-document ``Σ (y - ȳ)²`` about the full-sample mean ȳ (module
        docstring: the bootstrap keeps this centre, as it keeps the predictions)."""
        return sst_about_pooled_mean(self.n_doc, self.sy, self.syy)

    @staticmethod
    def _live(sst: torch.Tensor) -> torch.Tensor:
        """Dimensions with variance (a constant one would divide by zero in the standardised
        form); the same set in the estimate and every resample."""
        return sst > 1e-12 * float(sst.max().clamp(min=1e-300))

    @staticmethod
    def _ev(sse: torch.Tensor, sst: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return 1.0 - sse[..., mask].sum(-1) / sst[..., mask].sum(-1)

    @staticmethod
    def _std(sse: torch.Tensor, sst: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return 1.0 - (sse[..., mask] / sst[..., mask].clamp(min=1e-300)).mean(-1)
