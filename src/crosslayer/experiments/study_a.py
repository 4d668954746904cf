"""Study A: how much of a late layer — and of its SAE features — is predictable from an early one.

The question of seed study 000: fit an affine "transcoder" from the token embeddings to a late
residual stream, call what it cannot explain the part *computed on the way*
(``residual = late - transcoder(early)``), train one SAE on the late activations (baseline)
and one on the residuals, and ask whether the residual SAE's features are less predictable
from the embeddings than the baseline's.

What we do differently from the study (``shared/design/SEED_NOTES.md``, "Study A"):

* hooks are named (``hook_embed`` → ``blocks.12.hook_resid_post``), so the SAE and the target
  are the same tensor, not one layer apart;
* BOS/pad positions are excluded, contexts de-duplicated, and train / held-out splits disjoint
  by document; the transcoder is fitted on the train split only (ridge, strength by GCV on
  the train split) and scored on held-out tokens with per-dimension explained variance. The
  study's R² (one global mean, on the training data) and its Adam recipe are reported beside;
* both SAEs have the same architecture, width, sparsity target, training tokens and seed;
  *every* alive feature of both is probed, with class-balanced held-out metrics (balanced
  accuracy, AUROC, R²), and the two distributions are compared with a bootstrap CI and a
  Mann-Whitney test. The study's probe protocol runs beside ours on a sample of features.

Stages (each one's output is kept in the run directory, so a rerun resumes):

1. load the model and, if given, the pretrained SAE; resolve and check the hooks
2. collect one store (source + target) and one smaller depth-sweep store (every resid_post)
3. fit the transcoders: ridge (ours), Adam (the study's), MLP (nonlinear ceiling)
4. residuals = target - ridge transcoder(source), for every token
5. train the baseline SAE (target) and the residual SAE (residuals), identically
6. probe every alive feature of each SAE from the source; the study's protocol beside
7. compare the distributions; density and token-determinedness per feature; contexts of
   the most and least predictable features
8. depth sweep; write ``results.json`` (docs/results_schema.md), the plots and a summary

Entry point: :func:`run_study_a` (the CLI ``crosslayer run`` builds a :class:`RunConfig`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from crosslayer import fs
from crosslayer.config import RunConfig
from crosslayer.errors import ConfigMismatchError, CrosslayerError, DataError
from crosslayer.provenance import versions

SCHEMA = "crosslayer.study_a"
SCHEMA_VERSION = 2  # 2: no absolute paths (no `out`, config without it, relative paths)

# The study's own figures (Gemma 2 2B, embeddings → hidden_states[20], Gemma Scope layer 20),
# with the protocol that produced each, so that every table can show them beside ours.
STUDY_REFERENCE: dict[str, Any] = {
    "model": "google/gemma-2-2b",
    "source": "hidden_states[0] (= hook_embed)",
    "target": "hidden_states[20] (= blocks.19.hook_resid_post; its SAE reads blocks.20)",
    "transcoder_r2": 0.5025,
    "transcoder_protocol": "nn.Linear, Adam lr 1e-4, 20 epochs, batch 256, MSE; R² = 1 - SS_res "
    "/ SS_tot around ONE global mean, on the training data (no held-out split); ~15k samples "
    "incl. BOS/pad and duplicates",
    "baseline_accuracy": 0.7555,
    "residual_accuracy": 0.7423,
    "probe_protocol": "active = value > 0.1; subsample to balance classes; 80/20 split; plain "
    "accuracy; baseline: 30 latents, residual: 100 latents; both SAEs ReLU+L1 2304→16384 "
    "trained on 10,240 vectors",
}

SAE_NAMES = ("baseline", "residual")  # trained in the run; "pretrained" is the --sae one


# --------------------------------------------------------------------------------------------
# run directory, progress and timing


@dataclass
class Run:
    """The run directory and the bookkeeping shared by the stages."""

    cfg: RunConfig
    out: Path
    progress: bool = True
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def stages(self) -> Path:
        return self.out / "stages"

    def say(self, message: str) -> None:
        if self.progress:
            from crosslayer.cli.app import console_err

            console_err.print(f"[bold cyan]study A[/] {message}", highlight=False)

    @contextmanager
    def stage(self, name: str, message: str) -> Iterator[None]:
        """Announce a stage and record its wall time under ``timings[name]``."""
        self.say(message)
        start = time.perf_counter()
        yield
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 2)


def default_out(cfg: RunConfig) -> Path:
    """``runs/study_a-<profile>-<config hash>``: rerunning the same command resumes it."""
    return Path("runs") / f"study_a-{cfg.profile}-{cfg.hash()[:8]}"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def open_run(cfg: RunConfig, progress: bool = True) -> Run:
    """Create the run directory, or reopen it if it was made with the same config.

    A directory made with another config is refused (mixing stage outputs of two configs
    would give numbers that belong to neither).
    """
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    record = out / "config.json"
    mine = cfg.model_dump(mode="json", exclude={"out"})
    if record.is_file():
        old = json.loads(record.read_text())
        if old.get("config_hash") != cfg.hash():
            a, b = _flatten(old.get("config", {})), _flatten(mine)
            differs = sorted(k for k in {*a, *b} if a.get(k) != b.get(k))
            raise ConfigMismatchError(
                f"run directory {out} was made with a different config "
                f"(differs in: {', '.join(differs) or 'version'})",
                "use another --out, or delete the directory to start over",
            )
    elif out.exists() and any(out.iterdir()):
        raise CrosslayerError(
            f"{out} exists and is not a study A run directory", "choose a new or empty --out"
        )
    else:
        fs.atomic_write_json(
            record, {"config": mine, "config_hash": cfg.hash(), "versions": versions()}
        )
    # a run killed while writing a stage leaves a hidden temporary beside its output
    fs.remove_temporaries(out, recursive=True)
    (out / "stages").mkdir(parents=True, exist_ok=True)
    return Run(cfg, out, progress)


def _cached_json(path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Load a finished stage's JSON, or compute and save it."""
    if path.is_file():
        return dict(json.loads(path.read_text()))
    value = fs.jsonable(compute())
    fs.atomic_write_json(path, value)
    return dict(value)


def _nan(values: Any) -> np.ndarray:
    """A JSON list (None for NaN) back to a float array."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


# --------------------------------------------------------------------------------------------
# 1. model, SAE and hooks


def default_target(n_layers: int) -> str:
    """``resid_post`` of the block at about 70% depth (block 12 of 18 for Gemma 3 270M)."""
    return f"blocks.{max(0, int(0.7 * n_layers))}.hook_resid_post"


def resolve_hooks(cfg: RunConfig, lm: Any, sae: Any | None) -> tuple[str, str]:
    """The (source, target) pair, checked: valid for the model, source shallower, SAE on target.

    Without ``cfg.target`` the target is the pretrained SAE's hook (an SAE says where it
    reads; the user need not say it twice), else :func:`default_target`.
    """
    from crosslayer.model import hook_depth

    sae_hook = None if sae is None else sae.cfg.metadata.hook_name
    target = cfg.target or sae_hook or default_target(lm.n_layers)
    source = cfg.source
    lm.validate_hooks([source, target])
    if hook_depth(target) <= hook_depth(source):
        raise CrosslayerError(
            f"target hook {target} is not deeper than source hook {source}",
            "pass a --target later in the forward pass than --source "
            "(e.g. --source hook_embed --target blocks.12.hook_resid_post)",
        )
    if sae is not None and sae_hook != target:
        raise CrosslayerError(
            f"the SAE given with --sae reads {sae_hook}, but the target hook is {target}",
            f"pass --target {sae_hook}, or an SAE trained on {target}",
        )
    return source, target


def sweep_hooks(source: str, target: str) -> list[str]:
    """Hooks of the depth sweep: every ``resid_post`` deeper than the source, up to the target."""
    from crosslayer.model import hook_depth, parse_hook

    last = parse_hook(target).layer
    assert last is not None  # the target is deeper than the source, so it is a block hook
    deeper = [
        f"blocks.{layer}.hook_resid_post"
        for layer in range(last + 1)
        if hook_depth(f"blocks.{layer}.hook_resid_post") > hook_depth(source)
    ]
    return [source, *deeper]


# --------------------------------------------------------------------------------------------
# 2. data


def plan_split(corpus: Any, tokenizer: Any, cfg: RunConfig, n_tokens: int) -> dict[str, int]:
    """Tokens and documents per split in the first ``n_tokens`` sample tokens (no model run)."""
    from crosslayer.corpus import iter_contexts

    counts = {"train": 0, "heldout": 0}
    docs: dict[str, set[int]] = {"train": set(), "heldout": set()}
    for ctx in iter_contexts(
        corpus,
        tokenizer,
        context_len=cfg.data.context_len,
        heldout_frac=cfg.data.heldout_frac,
        seed=cfg.seed,
    ):
        split = "heldout" if ctx.split else "train"
        take = min(int(ctx.sample.sum()), n_tokens - counts["train"] - counts["heldout"])
        counts[split] += take
        docs[split].add(ctx.doc_id)
        if counts["train"] + counts["heldout"] >= n_tokens:
            break
    return {
        "n_train": counts["train"],
        "n_heldout": counts["heldout"],
        "docs_train": len(docs["train"]),
        "docs_heldout": len(docs["heldout"]),
    }


def check_split(plan: dict[str, int], cfg: RunConfig, what: str = "") -> None:
    """Both splits must hold ``data.min_split_tokens`` tokens: a clear error before any work."""
    need = cfg.data.min_split_tokens
    for split in ("train", "heldout"):
        n, docs = plan[f"n_{split}"], plan[f"docs_{split}"]
        if n < need:
            raise CrosslayerError(
                f"the {split} split{what} holds only {n:,} tokens from {docs} documents "
                f"(need at least {need:,})",
                "raise --tokens or data.heldout_frac, or lower data.max_doc_chars so the tokens "
                "come from more documents",
            )


def sweep_corpus(spec: str, cfg: RunConfig) -> Any:
    """The depth sweep's corpus: the same documents, each cut shorter in proportion.

    The sweep stores every layer, so it takes fewer tokens (``sweep.tokens``); cutting each
    document to ``max_doc_chars * sweep.tokens / tokens`` characters spreads them over the
    same documents (and the same held-out documents) as the main store.
    """
    from crosslayer.corpus import load_corpus

    n = min(cfg.sweep.tokens, cfg.tokens)
    chars = cfg.data.max_doc_chars
    return load_corpus(
        spec, max_doc_chars=None if chars is None else max(200, chars * n // cfg.tokens)
    )


def collect_stores(
    run: Run, lm: Any, corpora: tuple[Any, Any], source: str, target: str
) -> tuple[Any, Any]:
    """The main store (source + target) and, if enabled, the depth-sweep store."""
    from crosslayer.store import collect

    cfg = run.cfg
    common: dict[str, Any] = dict(
        context_len=cfg.data.context_len,
        heldout_frac=cfg.data.heldout_frac,
        seed=cfg.seed,
        batch_size=cfg.data.batch_size,
        progress=run.progress,
    )
    with run.stage("collect", f"collecting {cfg.tokens:,} tokens at {source}, {target}"):
        store = collect(
            lm,
            [source, target],
            corpus=corpora[0],
            n_tokens=cfg.tokens,
            out=run.out / "store",
            dtype=cfg.data.store_dtype,
            **common,
        )
    sweep = None
    if cfg.sweep.enabled:
        hooks = sweep_hooks(source, target)
        n = min(cfg.sweep.tokens, cfg.tokens)
        with run.stage("collect_sweep", f"collecting {n:,} tokens at {len(hooks)} hooks (sweep)"):
            try:
                sweep = collect(
                    lm,
                    hooks,
                    corpus=corpora[1],
                    n_tokens=n,
                    out=run.out / "sweep_store",
                    dtype=cfg.sweep.dtype,
                    **common,
                )
            except DataError as e:
                if "float16" not in e.problem:
                    raise
                fix = "set sweep.dtype: float32 (--set sweep.dtype=float32)"
                raise DataError(e.problem, fix) from e
    return store, sweep


@dataclass
class Data:
    """Source and target activations of each split, in memory (float32)."""

    X_train: np.ndarray
    Y_train: np.ndarray
    X_heldout: np.ndarray
    Y_heldout: np.ndarray
    train_idx: np.ndarray  # store rows of each split, for tokens and contexts
    heldout_idx: np.ndarray


def load_data(store: Any, source: str, target: str) -> Data:
    """Both splits of both hooks as float32 arrays."""
    X, Y = store.activations(source), store.activations(target)
    return Data(
        X_train=X.to_numpy("train", np.float32),
        Y_train=Y.to_numpy("train", np.float32),
        X_heldout=X.to_numpy("heldout", np.float32),
        Y_heldout=Y.to_numpy("heldout", np.float32),
        train_idx=np.flatnonzero(store.split == 0),
        heldout_idx=np.flatnonzero(store.split == 1),
    )


# --------------------------------------------------------------------------------------------
# 3-4. transcoders and residuals


def fit_transcoders(run: Run, data: Data) -> tuple[Any, dict[str, Any]]:
    """Ridge transcoder (kept) plus the study's Adam recipe and an MLP, all on train only.

    Returns the ridge transcoder and the metrics of all three. The ridge strength is chosen
    by generalised cross-validation on the train split, so held-out tokens play no part in
    fitting and their scores are honest.
    """
    from crosslayer.transcoder import DEFAULT_ALPHAS, AffineTranscoder, MLPTranscoder

    cfg = run.cfg.transcoder
    alphas = tuple(cfg.alphas) if cfg.alphas else DEFAULT_ALPHAS
    device = run.cfg.device
    weights = run.stages / "transcoder.npz"
    ridge = AffineTranscoder(alphas, device=device)
    if weights.is_file():
        saved = np.load(weights)
        ridge.coef_, ridge.intercept_ = saved["coef"], saved["intercept"]
        ridge.n_features_in_ = ridge.coef_.shape[1]
        return ridge, json.loads((run.stages / "transcoder.json").read_text())

    with run.stage("transcoder", "fitting the ridge transcoder (train split only)"):
        ridge.fit(data.X_train, data.Y_train)  # no held-out data given: alpha by GCV
        metrics: dict[str, Any] = {
            "ridge": _transcoder_metrics(ridge, data)
            | {"alpha": ridge.alpha_, "alpha_criterion": ridge.alpha_criterion_},
        }
    if cfg.study_recipe:
        sample = _sample_rows(len(data.X_train), cfg.adam_tokens, run.cfg.seed)
        with run.stage("transcoder_adam", f"fitting the study's Adam recipe on {len(sample):,}"):
            adam = AffineTranscoder(
                solver="adam",
                lr=cfg.adam_lr,
                epochs=cfg.adam_epochs,
                batch_size=cfg.adam_batch_size,
                seed=run.cfg.seed,
                device=device,
            ).fit(data.X_train[sample], data.Y_train[sample])
            metrics["study_recipe"] = _transcoder_metrics(adam, data) | {
                "n_fit_tokens": len(sample),
                "lr": cfg.adam_lr,
                "epochs": cfg.adam_epochs,
                "batch_size": cfg.adam_batch_size,
            }
    if cfg.mlp:
        with run.stage("transcoder_mlp", f"fitting the MLP transcoder ({cfg.mlp_hidden} hidden)"):
            mlp = MLPTranscoder(
                cfg.mlp_hidden,
                max_epochs=cfg.mlp_max_epochs,
                alphas=alphas,
                seed=run.cfg.seed,
                device=device,
            ).fit(data.X_train, data.Y_train)  # early stopping on a slice of train
            metrics["mlp"] = _transcoder_metrics(mlp, data) | {
                "hidden": cfg.mlp_hidden,
                "epochs_run": len(mlp.val_losses_) - 1,
            }
    metrics = fs.jsonable(metrics)
    np.savez(weights, coef=ridge.coef_, intercept=ridge.intercept_)
    fs.atomic_write_json(run.stages / "transcoder.json", metrics)
    return ridge, metrics


def _transcoder_metrics(model: Any, data: Data) -> dict[str, Any]:
    """Held-out metrics (ours) and train metrics (where the study measured), per-dim R² too."""
    heldout = model.evaluate(data.X_heldout, data.Y_heldout)
    train = model.evaluate(data.X_train, data.Y_train)
    return {
        "heldout": heldout.summary() | {"r2_per_dim": heldout.r2_per_dim},
        "train": train.summary(),
    }


def _sample_rows(n: int, k: int | None, seed: int) -> np.ndarray:
    """All row indices, or a sorted seeded sample of ``k`` of them."""
    if k is None or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def residuals(transcoder: Any, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``Y - transcoder(X)``: the part of the target the affine map does not predict."""
    return (Y - transcoder.predict(X)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# 5. the two SAEs


def sae_train_config(run: Run) -> Any:
    """The ONE training config both SAEs get (same width, sparsity, tokens, seed)."""
    from crosslayer.sae import SAETrainConfig

    c = run.cfg.sae_training
    return SAETrainConfig(
        arch=c.arch,
        width=c.width,
        target_l0=c.target_l0,
        epochs=c.epochs,
        batch_size=c.batch_size,
        lr=c.lr,
        seed=run.cfg.seed,
        device=run.cfg.device,
    )


def train_saes(
    run: Run, target: str, model_identity: dict[str, Any], inputs: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Train (or reload) one SAE per entry of ``inputs`` with :func:`sae_train_config`."""
    from crosslayer.sae import load_sae, train_sae

    cfg = sae_train_config(run)
    saes = {}
    for name, x in inputs.items():
        path = run.out / "saes" / name
        if (path / "cfg.json").is_file():
            saes[name] = load_sae(path, device=run.cfg.device)
            continue
        what = "target activations" if name == "baseline" else "residuals"
        with run.stage(f"sae_{name}", f"training the {name} SAE on {len(x):,} {what}"):
            saes[name] = train_sae(
                torch.from_numpy(x),
                cfg,
                out=path,
                hook=target,
                model_identity=model_identity,
                progress=run.progress,
            )
    return saes


@torch.no_grad()
def encode_sparse(sae: Any, x: np.ndarray, batch_size: int = 2048) -> sp.csc_matrix:
    """SAE feature activations ``[n, d_sae]`` as a sparse CSC matrix (columns are features)."""
    rows, cols, vals = [], [], []
    device = sae.W_enc.device
    for start in range(0, len(x), batch_size):
        f = sae.encode(torch.from_numpy(x[start : start + batch_size]).to(device)).float().cpu()
        r, c = torch.nonzero(f, as_tuple=True)
        rows.append((r + start).numpy())
        cols.append(c.numpy())
        vals.append(f[r, c].numpy())
    shape = (len(x), int(sae.cfg.d_sae))
    coo = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=shape
    )
    return coo.tocsc()


# --------------------------------------------------------------------------------------------
# 6. per-feature probes


def alive_features(f_train: sp.csc_matrix, f_heldout: sp.csc_matrix, min_active: int) -> np.ndarray:
    """Features active on >= ``min_active`` train tokens and on some but not all held-out ones."""
    n_train = np.diff((f_train > 0).astype(np.int8).tocsc().indptr)
    n_held = np.diff((f_heldout > 0).astype(np.int8).tocsc().indptr)
    ok = (n_train >= min_active) & (n_train < f_train.shape[0])
    ok &= (n_held >= 1) & (n_held < f_heldout.shape[0])
    return np.flatnonzero(ok)


def _columns(f: sp.csc_matrix, features: np.ndarray) -> Callable[[int, int], np.ndarray]:
    """``fn(start, stop)`` giving dense columns ``features[start:stop]`` (what probes stream)."""
    return lambda j0, j1: f[:, features[j0:j1]].toarray()


def probe_features(
    run: Run,
    name: str,
    data: Data,
    f_train: sp.csc_matrix,
    f_heldout: sp.csc_matrix,
) -> dict[str, Any]:
    """Fit ridge + logistic probes for every alive feature on train, score them on held-out."""
    from crosslayer.probes import FeatureProbes, study_protocol_probe

    cfg = run.cfg.probes
    alive = alive_features(f_train, f_heldout, cfg.min_active)
    if alive.size == 0:
        raise CrosslayerError(
            f"the {name} SAE has no alive features (none fires on >= {cfg.min_active} train "
            "tokens and on some held-out tokens)",
            "check that the SAE matches the target, train it longer, raise --tokens, or lower "
            "probes.min_active",
        )
    rng = np.random.default_rng(run.cfg.seed)
    probed = alive
    if cfg.max_features is not None and alive.size > cfg.max_features:
        probed = np.sort(rng.choice(alive, cfg.max_features, replace=False))
    probes = FeatureProbes(alpha=cfg.alpha, C=cfg.C, max_iter=cfg.max_iter, device=run.cfg.device)
    m = len(probed)
    fit_rows = _sample_rows(len(data.X_train), cfg.train_tokens, run.cfg.seed)
    probes.fit(data.X_train[fit_rows], _columns(f_train[fit_rows], probed), n_features=m)
    res = probes.evaluate(data.X_heldout, _columns(f_heldout, probed), n_features=m)
    n_active = np.diff((f_train[:, probed] > 0).astype(np.int8).tocsc().indptr)
    out: dict[str, Any] = {
        "n_features": int(f_train.shape[1]),
        "n_alive": int(alive.size),
        "n_probed": m,
        "n_probe_fit_tokens": len(fit_rows),
        "features": {
            "index": probed,
            "r2": res.r2,
            "balanced_accuracy": res.balanced_accuracy,
            "auroc": res.auroc,
            "density": n_active / f_train.shape[0],  # on the whole train split
            "n_active_train": n_active,
            "n_active_heldout": res.n_active_heldout,
        },
        "definitions": res.definitions,
        "study_protocol": None,
    }
    if cfg.study_protocol and cfg.study_features > 0:
        # The study's protocol on its own terms: a sample of features, the first
        # `study_tokens` tokens (train rows first) with no regard to our split, its 80/20 split.
        k = min(cfg.study_features, m)
        sample = np.sort(rng.choice(probed, k, replace=False))
        n = min(cfg.study_tokens, len(data.X_train) + len(data.X_heldout))
        X_all = np.concatenate([data.X_train, data.X_heldout])[:n]
        f_all = sp.vstack([f_train, f_heldout]).tocsc()[:n]
        acc = [
            study_protocol_probe(X_all, f_all[:, j].toarray().ravel(), seed=run.cfg.seed)
            for j in sample
        ]
        out["study_protocol"] = {
            "index": sample,
            "accuracy": [a["accuracy"] for a in acc],
            "n_per_class": [a["n_per_class"] for a in acc],
            "n_tokens": n,
        }
    return out


# --------------------------------------------------------------------------------------------
# 7. which features are predictable, and how the two SAEs compare


def token_determinedness_of(
    f: sp.csc_matrix, tokens: np.ndarray, features: np.ndarray, min_count: int, block: int = 256
) -> np.ndarray:
    """Share of each feature's variance explained by the current token's identity alone.

    Eta² of the feature grouped by token id (:func:`crosslayer.compare.token_determinedness`),
    over tokens seen at least ``min_count`` times; computed ``block`` features at a time.
    """
    from crosslayer.compare import token_determinedness

    get = _columns(f, features)
    parts = [
        token_determinedness(tokens, get(j0, min(j0 + block, len(features))), min_count=min_count)
        for j0 in range(0, len(features), block)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def top_contexts(
    f: sp.csc_matrix,
    feature: int,
    rows: np.ndarray,
    store: Any,
    tokenizer: Any,
    *,
    top_k: int,
    window: int,
) -> list[dict[str, Any]]:
    """The ``top_k`` tokens where ``feature`` fires most, each with the text before it.

    The marked token is wrapped in ``«»``. ``rows[i]`` is the store row of row ``i`` of ``f``;
    store rows are in context order, so the preceding tokens of a context are the rows just
    before it with the same ``context_id``.
    """
    col = f[:, feature]
    col = col.tocoo() if hasattr(col, "tocoo") else sp.coo_matrix(col)
    order = np.argsort(-col.data, kind="stable")[:top_k]
    out = []
    for i in order:
        row = int(rows[col.row[i]])
        start = row
        while (
            start > 0
            and row - start < window
            and store.context_ids[start - 1] == store.context_ids[row]
        ):
            start -= 1
        before = tokenizer.decode(store.tokens[start:row].tolist())
        token = tokenizer.decode([int(store.tokens[row])])
        out.append(
            {
                "activation": float(col.data[i]),
                "token": token,
                "text": f"{before}«{token}»",
                "doc_id": int(store.doc_ids[row]),
                "split": "heldout" if store.split[row] else "train",
            }
        )
    return out


def extremes(
    result: dict[str, Any],
    f_all: sp.csc_matrix,
    rows: np.ndarray,
    store: Any,
    tokenizer: Any,
    run: Run,
) -> dict[str, list[dict[str, Any]]]:
    """The ``n_extreme`` most and least predictable features with their top contexts."""
    cfg = run.cfg.analysis
    feats = result["features"]
    value = _nan(feats[cfg.metric])
    ok = np.flatnonzero(np.isfinite(value))
    ranked = ok[np.argsort(-value[ok], kind="stable")]
    picks = {"most": ranked[: cfg.n_extreme], "least": ranked[::-1][: cfg.n_extreme]}
    return {
        side: [
            {
                "feature": int(feats["index"][i]),
                cfg.metric: float(value[i]),
                "density": feats["density"][i],
                "token_determinedness": feats["token_determinedness"][i],
                "contexts": top_contexts(
                    f_all,
                    int(feats["index"][i]),
                    rows,
                    store,
                    tokenizer,
                    top_k=cfg.top_k,
                    window=cfg.window,
                ),
            }
            for i in idx
        ]
        for side, idx in picks.items()
    }


def analyse_sae(
    run: Run,
    name: str,
    sae: Any,
    data: Data,
    x_train: np.ndarray,
    x_heldout: np.ndarray,
    rows: np.ndarray,
    store: Any,
    tokenizer: Any,
) -> dict[str, Any]:
    """Probes, token-determinedness and top contexts for one SAE's features.

    ``x_train``/``x_heldout`` are what the SAE reads (target activations or residuals);
    its features are always predicted from the source activations in ``data``.
    """
    f_train, f_heldout = encode_sparse(sae, x_train), encode_sparse(sae, x_heldout)
    f_all = sp.vstack([f_train, f_heldout]).tocsc()
    res = probe_features(run, name, data, f_train, f_heldout)
    res["features"]["token_determinedness"] = token_determinedness_of(
        f_all,
        store.tokens[rows],
        np.asarray(res["features"]["index"]),
        run.cfg.analysis.token_min_count,
    )
    res = fs.jsonable(res)
    res["extremes"] = extremes(res, f_all, rows, store, tokenizer, run)
    return dict(res)


def compare_saes(run: Run, features: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Baseline vs residual: every metric's two distributions, and the study's protocol."""
    from crosslayer.compare import compare_distributions

    out: dict[str, Any] = {"headline_metric": run.cfg.analysis.metric}
    a, b = features["baseline"], features["residual"]
    for metric in ("balanced_accuracy", "auroc", "r2"):
        out[metric] = _compare(
            compare_distributions, _nan(a["features"][metric]), _nan(b["features"][metric]), run
        )
    if a["study_protocol"] and b["study_protocol"]:
        out["study_protocol_accuracy"] = _compare(
            compare_distributions,
            _nan(a["study_protocol"]["accuracy"]),
            _nan(b["study_protocol"]["accuracy"]),
            run,
        )
    return out


def _compare(fn: Callable[..., Any], a: np.ndarray, b: np.ndarray, run: Run) -> dict[str, Any]:
    """``fn`` (compare_distributions) with its "a"/"b" named baseline/residual."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size < 2 or b.size < 2:
        return {
            "baseline": {"n": int(a.size)},
            "residual": {"n": int(b.size)},
            "note": "fewer than two scored features in a group: no comparison",
        }
    res = dict(fn(a, b, n_boot=run.cfg.analysis.n_bootstrap, seed=run.cfg.seed))
    res["baseline"], res["residual"] = res.pop("a"), res.pop("b")
    res["difference"] = "baseline - residual"
    return res


# --------------------------------------------------------------------------------------------
# 8. depth sweep


def run_depth_sweep(run: Run, sweep_store: Any, source: str, target: str) -> dict[str, Any]:
    """Held-out explained variance from the source to every resid_post up to the target."""
    from crosslayer.experiments.depth import depth_sweep

    hooks = sweep_hooks(source, target)[1:]
    res = depth_sweep(sweep_store, source, hooks)
    return dict(res) if isinstance(res, dict) else dict(res.to_dict())


# --------------------------------------------------------------------------------------------
# the whole study


def run_study_a(
    cfg: RunConfig | None = None, *, model: Any = None, progress: bool = True
) -> dict[str, Any]:
    """Run study A as configured and return the contents of ``results.json`` plus ``out``.

    ``model``: an already loaded :class:`~crosslayer.model.LoadedModel` to use instead of
    loading ``cfg.model`` (tests pass a tiny one). Outputs go to ``cfg.out``; rerunning with
    the same config reuses every finished stage. ``out`` in the returned dict is the run
    directory (``results.json`` itself holds only paths relative to it). The last file
    written is ``checksums.json`` (sha256 of the run's files, for ``crosslayer verify``).
    """
    from crosslayer.corpus import load_corpus
    from crosslayer.model import load_model
    from crosslayer.plan import check_run
    from crosslayer.rules import check_steps
    from crosslayer.sae import evaluate_sae, load_sae
    from crosslayer.verify import forget_checksums, record_checksums

    cfg = cfg or RunConfig()
    check_run(cfg, model)  # everything checkable before the run directory exists
    run = open_run(cfg, progress)
    # Files are about to change: a checksums.json from an earlier attempt would call them
    # damaged. It comes back, complete, when the run finishes.
    forget_checksums(run.out)
    started = time.perf_counter()

    # 1. model, pretrained SAE, hooks
    with run.stage("load", f"loading {cfg.model if model is None else model.spec}"):
        lm = model if model is not None else load_model(cfg.model, device=cfg.device)
        pretrained = None if cfg.sae is None else load_sae(cfg.sae, model=lm, device=cfg.device)
        source, target = resolve_hooks(cfg, lm, pretrained)
        corpus = load_corpus(cfg.corpus, max_doc_chars=cfg.data.max_doc_chars)
        plan = plan_split(corpus, lm.tokenizer, cfg, cfg.tokens)
        check_split(plan, cfg)
        check_steps(plan["n_train"] * cfg.sae_training.epochs, cfg.sae_training.batch_size)
        corpora = (corpus, sweep_corpus(cfg.corpus, cfg) if cfg.sweep.enabled else None)
        if cfg.sweep.enabled:
            n_sweep = min(cfg.sweep.tokens, cfg.tokens)
            check_split(plan_split(corpora[1], lm.tokenizer, cfg, n_sweep), cfg, " of the sweep")
    run.say(
        f"{source} → {target}; {plan['n_train']:,} train tokens ({plan['docs_train']} docs), "
        f"{plan['n_heldout']:,} held-out ({plan['docs_heldout']} docs)"
    )

    # 2. activations
    store, sweep_store = collect_stores(run, lm, corpora, source, target)
    data = load_data(store, source, target)
    check_split(
        {
            "n_train": len(data.train_idx),
            "n_heldout": len(data.heldout_idx),
            "docs_train": len(np.unique(store.doc_ids[data.train_idx])),
            "docs_heldout": len(np.unique(store.doc_ids[data.heldout_idx])),
        },
        cfg,
    )

    # 3-4. transcoders, residuals
    ridge, transcoder_metrics = fit_transcoders(run, data)
    R_train = residuals(ridge, data.X_train, data.Y_train)
    R_heldout = residuals(ridge, data.X_heldout, data.Y_heldout)

    # 5. SAEs: baseline on the target, residual on the residuals, same config and tokens
    saes = train_saes(run, target, lm.identity, {"baseline": data.Y_train, "residual": R_train})
    sae_inputs = {
        "baseline": (data.Y_train, data.Y_heldout),
        "residual": (R_train, R_heldout),
    }
    if pretrained is not None:
        saes["pretrained"] = pretrained
        sae_inputs["pretrained"] = (data.Y_train, data.Y_heldout)

    # 6-7. probes, per-feature analysis, contexts (rows: store row of each train+held-out row)
    rows = np.concatenate([data.train_idx, data.heldout_idx])
    features: dict[str, dict[str, Any]] = {}
    sae_reports: dict[str, dict[str, Any]] = {}
    for name, sae in saes.items():
        x_train, x_heldout = sae_inputs[name]
        with run.stage(f"probes_{name}", f"probing every alive feature of the {name} SAE"):
            features[name] = _cached_json(
                run.stages / f"features_{name}.json",
                partial(
                    analyse_sae, run, name, sae, data, x_train, x_heldout, rows, store, lm.tokenizer
                ),
            )
            sae_reports[name] = _cached_json(
                run.stages / f"sae_{name}.json", partial(_sae_report, sae, x_heldout, evaluate_sae)
            )

    comparison = compare_saes(run, features)

    # 8. depth sweep
    depth = None
    if sweep_store is not None:
        with run.stage("depth_sweep", "depth sweep: source → every resid_post"):
            depth = _cached_json(
                run.stages / "depth.json", lambda: run_depth_sweep(run, sweep_store, source, target)
            )

    results: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # Paths are relative to the run directory and the config leaves out `out`, so the
        # same config and seed give the same file wherever the run is written.
        "config": cfg.model_dump(mode="json", exclude={"out"}),
        "config_hash": cfg.hash(),
        "versions": versions(),
        "model": lm.identity,
        "hooks": {"source": source, "target": target},
        "data": {
            "corpus": corpus.identity(),
            "n_tokens": int(store.n_tokens),
            "n_train": len(data.train_idx),
            "n_heldout": len(data.heldout_idx),
            "docs_train": len(np.unique(store.doc_ids[data.train_idx])),
            "docs_heldout": len(np.unique(store.doc_ids[data.heldout_idx])),
            "d_model": int(lm.d_model),
            "store": "store",
            "sweep_store": None if sweep_store is None else "sweep_store",
        },
        "study_reference": STUDY_REFERENCE,
        "transcoder": transcoder_metrics,
        "saes": {
            name: sae_reports[name] | {"path": f"saes/{name}" if name in SAE_NAMES else cfg.sae}
            for name in saes
        },
        "features": features,
        "comparison": comparison,
        "depth_sweep": depth,
        "timings": run.timings | {"total": round(time.perf_counter() - started, 2)},
    }
    results = fs.jsonable(results)
    fs.atomic_write_json(run.out / "results.json", results)

    from crosslayer.experiments.study_a_plots import write_plots

    with run.stage("plots", "writing plots"):
        results["plots"] = write_plots(results, run.out)
    fs.atomic_write_json(run.out / "results.json", results)

    # The report reads results.json and the run directory, so it comes last.
    from crosslayer.report import write_report

    with run.stage("report", "writing report.html"):
        write_report(run.out, model=lm)
    record_checksums(run.out)
    return dict(results) | {"out": str(run.out)}


def _sae_report(sae: Any, x_heldout: np.ndarray, evaluate: Callable[..., Any]) -> dict[str, Any]:
    """Held-out reconstruction and sparsity of one SAE, with its shape and training config."""
    meta = sae.cfg.metadata
    report = evaluate(sae, torch.from_numpy(x_heldout))
    return {
        "d_in": int(sae.cfg.d_in),
        "width": int(sae.cfg.d_sae),
        "architecture": type(sae).__name__,
        "hook_name": meta.hook_name,
        "training_tokens": getattr(meta, "training_tokens", None),
        "heldout": report,
    }


# --------------------------------------------------------------------------------------------
# the summary printed at the end


def _fmt(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def summary_table(results: dict[str, Any]) -> Any:
    """A rich table of the headline numbers, ours beside the study's (with each protocol)."""
    from rich.table import Table

    ref = results["study_reference"]
    tc = results["transcoder"]
    h = results["hooks"]
    table = Table(title=f"Study A: {h['source']} → {h['target']} on {results['model']['spec']}")
    table.add_column("measure")
    table.add_column("ours", justify="right")
    table.add_column("study (Gemma 2 2B)", justify="right")
    table.add_row(
        "transcoder R², held-out, per-dim means (ridge)",
        _fmt(tc["ridge"]["heldout"]["explained_variance"]),
        "not measured",
    )
    table.add_row(
        "transcoder R², train, one global mean (ridge)",
        _fmt(tc["ridge"]["train"]["r2_global_mean"]),
        f"{ref['transcoder_r2']} (Adam)",
    )
    if "study_recipe" in tc:
        table.add_row(
            "study's Adam recipe: held-out EV / train global-mean R²",
            f"{_fmt(tc['study_recipe']['heldout']['explained_variance'])} / "
            f"{_fmt(tc['study_recipe']['train']['r2_global_mean'])}",
            f"– / {ref['transcoder_r2']}",
        )
    if "mlp" in tc:
        table.add_row(
            "MLP transcoder R², held-out", _fmt(tc["mlp"]["heldout"]["explained_variance"]), "–"
        )
    cmp = results["comparison"]
    metric = cmp["headline_metric"]
    for name, key in (("baseline", "baseline_accuracy"), ("residual", "residual_accuracy")):
        feats = results["features"][name]
        stats = cmp.get(metric, {}).get(name, {})
        table.add_row(
            f"{name} SAE: mean {metric} ({feats['n_probed']} of {feats['n_alive']} alive)",
            _fmt(stats.get("mean")),
            f"{ref[key]} (accuracy, study protocol)",
        )
    c = cmp.get(metric, {})
    if "diff_mean" in c:
        lo, hi = c["diff_mean_ci95"]
        table.add_row(
            "baseline − residual [95% CI], Mann-Whitney p",
            f"{c['diff_mean']:+.3f} [{lo:+.3f}, {hi:+.3f}], p={c['mannwhitney_p']:.2g}",
            f"{ref['baseline_accuracy'] - ref['residual_accuracy']:+.4f}, no test",
        )
    s = cmp.get("study_protocol_accuracy", {})
    if "diff_mean" in s:
        table.add_row(
            "study protocol accuracy here: baseline / residual",
            f"{s['baseline']['mean']:.3f} / {s['residual']['mean']:.3f}",
            f"{ref['baseline_accuracy']} / {ref['residual_accuracy']}",
        )
    if "pretrained" in results["features"]:
        v = _nan(results["features"]["pretrained"]["features"][metric])
        table.add_row(
            f"pretrained SAE (--sae): mean {metric}",
            _fmt(float(np.nanmean(v)) if np.isfinite(v).any() else None),
            "–",
        )
    depth = results.get("depth_sweep")
    if depth:
        ev = _nan(depth["heldout_explained_variance"])
        best = int(np.nanargmax(ev)) if np.isfinite(ev).any() else None
        if best is not None:
            table.add_row(
                "depth sweep: best held-out EV",
                f"{ev[best]:.3f} at {depth['target_hooks'][best]}",
                "–",
            )
    return table
