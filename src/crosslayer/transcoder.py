"""Predict one layer from another: the affine cross-layer transcoder ``y = W x + b``.

The default solver is exact ridge regression from sufficient statistics (Σx, Σy, X'X, X'Y, Σy²)
streamed in float64, so activations never need to fit in memory. The engine is
:mod:`crosslayer.linalg` (shared with the probes and the depth sweep): the train covariance is
eigendecomposed once and, for every alpha, the held-out squared error follows from the held-out
statistics alone; without held-out data, generalised cross-validation picks alpha. Alphas are
relative to ``trace(Cxx) / d_in``, so one grid serves any activation scale.

``solver="adam"`` reproduces seed study A's recipe (``nn.Linear``, Adam lr 1e-4, 20 epochs,
batch 256, MSE) for comparison. :class:`MLPTranscoder` measures how much more a one-hidden-layer
network explains from the same source layer.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.base import BaseEstimator, RegressorMixin

from crosslayer import distributed, fs
from crosslayer.device import resolve_device
from crosslayer.errors import CrosslayerError
from crosslayer.linalg import (
    DEFAULT_ALPHAS,
    RidgeEigen,
    SufficientStats,
    accumulate,
    load_rows,
    solve_ridge,
)
from crosslayer.metrics import (
    ArrayLike,
    RegressionAccumulator,
    RegressionReport,
    as_tensor,
    check_2d,
    check_pair,
    row_chunks,
)
from crosslayer.rules import check_alphas
from crosslayer.store.reader import ActivationStore, open_store

# Re-exported: these lived here before crosslayer.linalg existed.
__all__ = [
    "DEFAULT_ALPHAS",
    "AffineTranscoder",
    "MLPTranscoder",
    "RidgeEigen",
    "SufficientStats",
    "fit_transcoder_on_store",
    "solve_ridge",
]

# The saved artefact (see AffineTranscoder.save_pretrained and docs/results_schema.md).
TRANSCODER_FORMAT = "crosslayer.affine_transcoder"
TRANSCODER_CONFIG = "cfg.json"
TRANSCODER_WEIGHTS = "model.safetensors"
_SAVED_FIX = "pass a directory written by AffineTranscoder.save_pretrained (a run's transcoder/)"


class AffineTranscoder(RegressorMixin, BaseEstimator):
    """``y = W x + b`` from a source layer to a target layer (scikit-learn API).

    Parameters
    ----------
    alphas: relative ridge strengths (penalty ``alpha * trace(Cxx)/d_in``); the best on held-out
        data (``fit(..., X_val, Y_val)`` or ``partial_fit(..., heldout=True)``) wins, else GCV.
    solver: ``"ridge"`` (exact, streamed) or ``"adam"`` (seed study A's recipe).
    lr, epochs, batch_size, seed: the Adam recipe (lr 1e-4, 20 epochs, batch 256, MSE).
    chunk_size: rows read at a time from array inputs.
    device: ``"auto"``/None = CUDA when present.

    Learned: ``coef_ [d_out, d_in]``, ``intercept_ [d_out]``, ``alpha_``, ``penalty_``
    (absolute, on the covariance), ``alpha_criterion_``, ``alpha_scores_``, ``train_report_``
    (on the training split, as the seed study measured; cosine is NaN when computed from
    statistics) and ``heldout_report_`` (None without held-out data).

    Saved with :meth:`save_pretrained` and reloaded with :meth:`from_pretrained`; a reloaded
    transcoder also knows ``source_hook_``, ``target_hook_`` and ``model_identity_`` (what
    :func:`crosslayer.model.splice` needs to put it into a model).
    """

    def __init__(
        self,
        alphas: tuple[float, ...] | list[float] = DEFAULT_ALPHAS,
        solver: str = "ridge",
        *,
        lr: float = 1e-4,
        epochs: int = 20,
        batch_size: int = 256,
        seed: int = 0,
        chunk_size: int = 8192,
        device: str | None = None,
    ) -> None:
        self.alphas = alphas
        self.solver = solver
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.seed = seed
        self.chunk_size = chunk_size
        self.device = device

    # -- fitting ---------------------------------------------------------------------------

    def fit(
        self,
        X: ArrayLike,
        Y: ArrayLike,
        X_val: ArrayLike | None = None,
        Y_val: ArrayLike | None = None,
    ) -> AffineTranscoder:
        """Fit on row-aligned arrays ``X [n, d_in]``, ``Y [n, d_out]`` (memmaps welcome)."""
        self._check_params()
        check_pair(X, Y)
        if (X_val is None) != (Y_val is None):
            raise CrosslayerError(
                "only one of X_val and Y_val was given", "pass both held-out arrays or neither"
            )
        if self.solver == "adam":
            return self._fit_adam(X, Y, X_val, Y_val)
        self._reset()
        accumulate(X, Y, self.train_stats_, self.chunk_size)
        if X_val is not None:
            accumulate(X_val, Y_val, self.heldout_stats_, self.chunk_size)
        return self.finalize()

    def partial_fit(self, X: ArrayLike, Y: ArrayLike, *, heldout: bool = False) -> AffineTranscoder:
        """Accumulate one batch (train, or held-out for choosing alpha); then :meth:`finalize`."""
        self._check_params()
        if self.solver != "ridge":
            raise CrosslayerError(
                f"partial_fit needs solver='ridge', not {self.solver!r}",
                "use fit(X, Y) for the Adam recipe",
            )
        if not hasattr(self, "train_stats_"):
            self._reset()
        (self.heldout_stats_ if heldout else self.train_stats_).update(X, Y)
        return self

    def finalize(self) -> AffineTranscoder:
        """Solve from the accumulated statistics: choose alpha, set ``coef_`` and reports."""
        if not hasattr(self, "train_stats_") or self.train_stats_.n == 0:
            raise CrosslayerError(
                "no training batches were accumulated",
                "call partial_fit(X, Y) on the training batches first",
            )
        eig = RidgeEigen(self.train_stats_)
        val = self.heldout_stats_ if self.heldout_stats_.n > 0 else None
        if val is not None and val.sum_x.numel() != eig.mean_x.numel():
            raise CrosslayerError(
                "held-out batches have a different width from train batches",
                "stream the same hooks for both splits",
            )
        sol = solve_ridge(eig, self.train_stats_, val, np.asarray(self.alphas, dtype=float))
        coef = sol.coef.T  # [d_out, d_in]
        self.coef_ = coef.cpu().numpy()
        self.intercept_ = (sol.mean_y - coef @ eig.mean_x).cpu().numpy()
        self.alpha_, self.penalty_ = sol.alpha, sol.alpha * eig.scale
        self.alpha_criterion_, self.alpha_scores_ = sol.criterion, sol.scores
        self.train_report_, self.heldout_report_ = sol.train_report, sol.heldout_report
        self.n_features_in_ = coef.shape[1]
        return self

    def _fit_adam(
        self, X: ArrayLike, Y: ArrayLike, X_val: ArrayLike | None, Y_val: ArrayLike | None
    ) -> AffineTranscoder:
        """Seed study A's recipe: nn.Linear, Adam, shuffled mini-batches, mean squared error."""
        dev = resolve_device(self.device)
        x, y = load_rows(X, dev, self.chunk_size), load_rows(Y, dev, self.chunk_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            lin = torch.nn.Linear(x.shape[1], y.shape[1]).to(dev)
        opt = torch.optim.Adam(lin.parameters(), lr=self.lr)
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epochs):
            for idx in torch.randperm(x.shape[0], generator=gen).split(self.batch_size):
                idx = idx.to(dev)
                loss = torch.nn.functional.mse_loss(lin(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        self.coef_ = lin.weight.detach().double().cpu().numpy()
        self.intercept_ = lin.bias.detach().double().cpu().numpy()
        self.alpha_, self.penalty_, self.alpha_criterion_ = 0.0, 0.0, "none"
        self.alpha_scores_ = np.array([np.nan])
        self.n_features_in_ = x.shape[1]
        self.train_report_ = self.evaluate(X, Y)
        self.heldout_report_ = None if X_val is None else self.evaluate(X_val, Y_val)
        return self

    # -- using the fit ---------------------------------------------------------------------

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predicted target activations ``[n, d_out]`` (float32)."""
        return np.concatenate([p.cpu().numpy() for p in self._predict_chunks(X)])

    def evaluate(self, X: ArrayLike, Y: ArrayLike) -> RegressionReport:
        """Every metric of :mod:`crosslayer.metrics` on ``(X, Y)``, streamed by chunks."""
        n, _, d_out = check_pair(X, Y)
        self._check_fitted()
        if d_out != self.coef_.shape[0]:
            raise CrosslayerError(
                f"Y has {d_out} dimensions, the fit predicts {self.coef_.shape[0]}",
                "score on the hook it was fitted on",
            )
        acc = RegressionAccumulator(self.device)
        chunks = row_chunks(n, self.chunk_size)
        for rows, pred in zip(chunks, self._predict_chunks(X), strict=True):
            acc.update(Y[rows], pred)
        return acc.result()

    def score(self, X: ArrayLike, Y: ArrayLike, sample_weight: None = None) -> float:
        """Explained variance around per-dimension means (SAELens) on ``(X, Y)``."""
        return self.evaluate(X, Y).explained_variance

    def _predict_chunks(self, X: ArrayLike) -> Any:
        self._check_fitted()
        n, d = check_2d("X", X)
        if d != self.n_features_in_:
            raise CrosslayerError(
                f"X has {d} dimensions but the transcoder was fitted on {self.n_features_in_}",
                "pass activations of the source hook",
            )
        dev = resolve_device(self.device)
        w = torch.as_tensor(self.coef_, dtype=torch.float32, device=dev)
        b = torch.as_tensor(self.intercept_, dtype=torch.float32, device=dev)
        for rows in row_chunks(n, self.chunk_size):
            yield torch.addmm(b, as_tensor(X[rows], dev), w.T)

    # -- the saved artefact ----------------------------------------------------------------

    def save_pretrained(
        self,
        directory: str | Path,
        *,
        source_hook: str | None = None,
        target_hook: str | None = None,
        model: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write ``directory/model.safetensors`` (``W [d_out, d_in]`` and ``b [d_out]`` in
        float64, as fitted) and ``directory/cfg.json``, atomically.

        ``source_hook``/``target_hook``: the hook names the map reads and predicts; ``model``:
        the identity of the model the activations came from (``LoadedModel.identity``). Each
        defaults to what a reloaded transcoder already knows. ``cfg.json`` also holds alpha,
        the solver and the training statistics the fit rests on (``n_train`` and, for a ridge
        fit, the train means of source and target, saved beside the weights as ``x_mean`` and
        ``y_mean``). ``extra``: more JSON-able fields (a run adds its config hash).
        """
        self._check_fitted()
        source_hook = source_hook or getattr(self, "source_hook_", None)
        target_hook = target_hook or getattr(self, "target_hook_", None)
        model = model if model is not None else getattr(self, "model_identity_", None)
        tensors = {
            "W": torch.as_tensor(np.ascontiguousarray(self.coef_, dtype=np.float64)),
            "b": torch.as_tensor(np.ascontiguousarray(self.intercept_, dtype=np.float64)),
        }
        stats = getattr(self, "train_stats_", None)
        n_train = getattr(self, "n_train_", None)
        if stats is not None and stats.n > 0:
            n_train = int(stats.n)
            tensors["x_mean"] = (stats.sum_x / stats.n).double().cpu().contiguous()
            tensors["y_mean"] = (stats.sum_y / stats.n).double().cpu().contiguous()
        elif getattr(self, "x_mean_", None) is not None:
            tensors["x_mean"] = torch.as_tensor(np.asarray(self.x_mean_, dtype=np.float64))
            tensors["y_mean"] = torch.as_tensor(np.asarray(self.y_mean_, dtype=np.float64))
        cfg = {
            "format": TRANSCODER_FORMAT,
            "format_version": 1,
            "source_hook": source_hook,
            "target_hook": target_hook,
            "model": model,
            "d_in": int(self.coef_.shape[1]),
            "d_out": int(self.coef_.shape[0]),
            "solver": self.solver,
            "alpha": float(getattr(self, "alpha_", float("nan"))),
            "penalty": float(getattr(self, "penalty_", float("nan"))),
            "alpha_criterion": getattr(self, "alpha_criterion_", None),
            "alphas": [float(a) for a in self.alphas],
            "n_train": n_train,
            "has_means": "x_mean" in tensors,
        } | (extra or {})
        out = Path(directory)
        with fs.atomic_dir(out) as tmp:
            save_file(tensors, str(tmp / TRANSCODER_WEIGHTS))
            fs.atomic_write_json(tmp / TRANSCODER_CONFIG, fs.jsonable(cfg))
        return out

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, device: str | None = None
    ) -> AffineTranscoder:
        """Reload a transcoder written by :meth:`save_pretrained`: it predicts exactly as saved.

        The training statistics beyond the means are not kept, so it cannot be refitted
        (``partial_fit`` starts afresh).
        """
        path = Path(directory)
        cfg_path, weights = path / TRANSCODER_CONFIG, path / TRANSCODER_WEIGHTS
        if not cfg_path.is_file() or not weights.is_file():
            raise CrosslayerError(
                f"no saved transcoder at {path} (needs {TRANSCODER_CONFIG} and "
                f"{TRANSCODER_WEIGHTS})",
                _SAVED_FIX,
            )
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("format") != TRANSCODER_FORMAT:
            raise CrosslayerError(
                f"{cfg_path} is not a crosslayer transcoder config",
                _SAVED_FIX,
            )
        tensors = load_file(str(weights))
        w, b = tensors["W"].numpy(), tensors["b"].numpy()
        if w.shape != (cfg["d_out"], cfg["d_in"]) or b.shape != (cfg["d_out"],):
            raise CrosslayerError(
                f"{weights} holds W {tuple(w.shape)} and b {tuple(b.shape)}, but cfg.json says "
                f"d_in {cfg['d_in']}, d_out {cfg['d_out']}",
                "the artefact is damaged: save the transcoder again (or rerun the stage)",
            )
        alphas = cfg.get("alphas") or DEFAULT_ALPHAS
        tc = cls(tuple(alphas), solver=cfg.get("solver", "ridge"), device=device)
        tc.coef_, tc.intercept_ = w, b
        tc.n_features_in_ = int(cfg["d_in"])
        tc.alpha_, tc.penalty_ = cfg.get("alpha"), cfg.get("penalty")
        tc.alpha_criterion_ = cfg.get("alpha_criterion")
        tc.n_train_ = cfg.get("n_train")
        tc.x_mean_ = tensors["x_mean"].numpy() if "x_mean" in tensors else None
        tc.y_mean_ = tensors["y_mean"].numpy() if "y_mean" in tensors else None
        tc.source_hook_, tc.target_hook_ = cfg.get("source_hook"), cfg.get("target_hook")
        tc.model_identity_ = cfg.get("model")
        tc.config_ = cfg
        return tc

    # -- validation ------------------------------------------------------------------------

    def _reset(self) -> None:
        self.train_stats_ = SufficientStats(self.device)
        self.heldout_stats_ = SufficientStats(self.device)

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise CrosslayerError(
                "this AffineTranscoder is not fitted yet",
                "call fit(X, Y), or partial_fit(...) then finalize(), first",
            )

    def _check_params(self) -> None:
        if self.solver not in ("ridge", "adam"):
            raise CrosslayerError(f"unknown solver {self.solver!r}", "use 'ridge' or 'adam'")
        check_alphas(self.alphas)
        if self.chunk_size < 1 or self.batch_size < 1 or self.epochs < 0:
            raise CrosslayerError(
                "chunk_size and batch_size must be >= 1 and epochs >= 0", "pass positive sizes"
            )


def fit_transcoder_on_store(
    store: ActivationStore | str | Path,
    source: str,
    target: str,
    *,
    batch_size: int = 4096,
    **transcoder_kwargs: Any,
) -> AffineTranscoder:
    """Fit a ridge :class:`AffineTranscoder` ``source → target`` on a store, under torchrun too.

    Each rank streams only its own shards (train rows into the training statistics,
    held-out rows into the statistics that choose alpha); the statistics are all-reduced
    and every rank solves the same system, so every rank returns the same transcoder as
    a single process reading the whole store.
    """
    if isinstance(store, str | Path):
        store = open_store(store)
    tc = AffineTranscoder(solver="ridge", **transcoder_kwargs)
    tc._reset()
    shards: Sequence[int] = distributed.my_shards(len(store.manifest["shards"]))
    for split, stats in (("train", tc.train_stats_), ("heldout", tc.heldout_stats_)):
        for batch in store.iter_batches(
            [source, target], split=split, batch_size=batch_size, dtype=np.float64, shards=shards
        ):
            stats.update(batch[source], batch[target])
        distributed.all_reduce_stats(stats)
    return tc.finalize()


class MLPTranscoder(RegressorMixin, BaseEstimator):
    """``y = affine(x) + W2 relu(W1 x + b1)``: how much more a nonlinear map explains.

    The affine part starts at the ridge solution (:class:`AffineTranscoder`) and the hidden
    layer at zero output, so training starts from the affine fit; Adam then trains all of it
    and early stopping on held-out error keeps the best epoch. It can therefore only match or
    beat the affine map on the held-out data used for stopping. Inputs are standardised per
    dimension; outputs are centred and divided by ONE global scale, so the loss weighs
    dimensions like the explained-variance metric does. Loads ``X`` and ``Y`` into memory.
    """

    def __init__(
        self,
        hidden: int = 1024,
        *,
        lr: float = 1e-3,
        batch_size: int = 512,
        max_epochs: int = 30,
        patience: int = 3,
        weight_decay: float = 0.0,
        validation_fraction: float = 0.1,
        alphas: tuple[float, ...] = DEFAULT_ALPHAS,
        seed: int = 0,
        chunk_size: int = 8192,
        device: str | None = None,
    ) -> None:
        self.hidden = hidden
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.alphas = alphas
        self.seed = seed
        self.chunk_size = chunk_size
        self.device = device

    def fit(
        self,
        X: ArrayLike,
        Y: ArrayLike,
        X_val: ArrayLike | None = None,
        Y_val: ArrayLike | None = None,
    ) -> MLPTranscoder:
        """Fit on arrays; without ``X_val``/``Y_val``, ``validation_fraction`` is held out."""
        n, _, _ = check_pair(X, Y)
        if self.hidden < 1 or not 0 < self.validation_fraction < 1:
            raise CrosslayerError(
                "hidden must be >= 1 and 0 < validation_fraction < 1",
                "pass e.g. hidden=1024, validation_fraction=0.1",
            )
        dev = resolve_device(self.device)
        x, y = load_rows(X, dev, self.chunk_size), load_rows(Y, dev, self.chunk_size)
        if X_val is None or Y_val is None:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).to(dev)
            n_val = max(1, round(n * self.validation_fraction))
            xv, yv, x, y = x[perm[:n_val]], y[perm[:n_val]], x[perm[n_val:]], y[perm[n_val:]]
        else:
            check_pair(X_val, Y_val, ("X_val", "Y_val"))
            xv, yv = load_rows(X_val, dev, self.chunk_size), load_rows(Y_val, dev, self.chunk_size)
        affine = AffineTranscoder(self.alphas, device=self.device).fit(x, y, xv, yv)
        self.x_mean_, self.x_scale_ = x.mean(0), x.std(0).clamp(min=1e-6)
        self.y_mean_, self.y_scale_ = y.mean(0), float(y.var(0).mean().sqrt().clamp(min=1e-6))
        net = self._init_net(affine, x.shape[1], y.shape[1], dev)
        xs, ys = self._scale_x(x), (y - self.y_mean_) / self.y_scale_
        xvs, yvs = self._scale_x(xv), (yv - self.y_mean_) / self.y_scale_
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        gen = torch.Generator().manual_seed(self.seed)
        best, best_state, bad = self._val_loss(net, xvs, yvs), copy.deepcopy(net.state_dict()), 0
        self.val_losses_ = [best]
        for _ in range(self.max_epochs):
            net.train()
            for idx in torch.randperm(xs.shape[0], generator=gen).split(self.batch_size):
                idx = idx.to(dev)
                loss = torch.nn.functional.mse_loss(net(xs[idx]), ys[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            self.val_losses_.append(self._val_loss(net, xvs, yvs))
            if self.val_losses_[-1] < best:
                best, best_state, bad = self.val_losses_[-1], copy.deepcopy(net.state_dict()), 0
            else:
                bad += 1
                if bad >= self.patience:
                    break
        net.load_state_dict(best_state)
        self.net_ = net.eval()
        self.affine_ = affine
        self.n_features_in_ = x.shape[1]
        return self

    def _init_net(
        self, affine: AffineTranscoder, d_in: int, d_out: int, dev: torch.device
    ) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = _SkipMLP(d_in, self.hidden, d_out).to(dev)
        # Express the ridge map in standardised units: y_s = (C diag(sd) x_s + C mu + b - my)/g.
        c = torch.as_tensor(affine.coef_, dtype=torch.float32, device=dev)
        b = torch.as_tensor(affine.intercept_, dtype=torch.float32, device=dev)
        with torch.no_grad():
            net.skip.weight.copy_(c * self.x_scale_ / self.y_scale_)
            net.skip.bias.copy_((c @ self.x_mean_ + b - self.y_mean_) / self.y_scale_)
            net.out.weight.zero_()
        return net

    def _scale_x(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.x_mean_) / self.x_scale_

    @staticmethod
    def _val_loss(net: torch.nn.Module, xv: torch.Tensor, yv: torch.Tensor) -> float:
        net.eval()
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(net(xv), yv))

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predicted target activations ``[n, d_out]``."""
        if not hasattr(self, "net_"):
            raise CrosslayerError("this MLPTranscoder is not fitted yet", "call fit(X, Y) first")
        n, d = check_2d("X", X)
        if d != self.n_features_in_:
            raise CrosslayerError(
                f"X has {d} dimensions, the fit expects {self.n_features_in_}",
                "pass activations of the source hook",
            )
        dev = resolve_device(self.device)
        out = []
        with torch.no_grad():
            for rows in row_chunks(n, self.chunk_size):
                ys = self.net_(self._scale_x(as_tensor(X[rows], dev)))
                out.append((ys * self.y_scale_ + self.y_mean_).cpu().numpy())
        return np.concatenate(out)

    def evaluate(self, X: ArrayLike, Y: ArrayLike) -> RegressionReport:
        """Every metric of :mod:`crosslayer.metrics` on ``(X, Y)``."""
        check_pair(X, Y)
        acc = RegressionAccumulator(self.device)
        acc.update(Y, self.predict(X))
        return acc.result()

    def score(self, X: ArrayLike, Y: ArrayLike, sample_weight: None = None) -> float:
        """Explained variance around per-dimension means on ``(X, Y)``."""
        return self.evaluate(X, Y).explained_variance


class _SkipMLP(torch.nn.Module):
    """An affine skip path plus one ReLU hidden layer."""

    def __init__(self, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__()
        self.skip = torch.nn.Linear(d_in, d_out)
        self.hid = torch.nn.Linear(d_in, hidden)
        self.out = torch.nn.Linear(hidden, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.out(torch.relu(self.hid(x)))
