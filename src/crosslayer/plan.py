"""What a ``crosslayer run`` will cost, before it runs: tokens, hooks, disk, memory and time.

>>> from crosslayer.config import profile_config
>>> plan = plan_run(profile_config("quick"))
>>> print(plan.summary())   # plan: 24,000 tokens, hooks ...; disk ...; estimated time ~...

:func:`plan_run` reads the model's shape without its weights (:mod:`crosslayer.model.shape`),
reads no corpus, and measures this machine's matmul throughput for 0.3 s. Everything else is
arithmetic on the config, stage by stage as :func:`crosslayer.experiments.study_a.run_study_a`
runs them:

* **tokens**: collected (the held-out share is ``data.heldout_frac`` of them; the split is by
  document, so the real one differs a little), and what each stage processes;
* **disk**: exact ``.npy`` sizes of both stores (``docs/store_format.md``), the SAE files, the
  stage and report files (fitted sizes), and the model cache if it is not built yet;
* **memory**: the peak resident size, as the sum of its main terms (see :func:`_memory`);
* **time**: FLOPs of each stage divided by the measured GFLOP/s times an efficiency factor
  calibrated on the measured runs of ``benchmarks/results/study_a.md``.

The figures of the cost model are data, ``crosslayer/data/plan_calibration.json``, each with the
measurement it came from. The hooks are resolved by the run's own rules
(:mod:`crosslayer.experiments.study_a.hooks`), and the sizes that drive disk and memory
(shard tokens, SAE shuffle buffer, probe feature chunk) are imported from the modules that
use them, so a change there moves the plan with it.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from importlib import resources
from io import StringIO
from typing import Any, cast

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from crosslayer.config import RunConfig
from crosslayer.corpus import load_corpus
from crosslayer.crossfit import DEFAULT_ALPHAS as DECOMPOSITION_ALPHAS
from crosslayer.device import resolve_device, resolve_dtype
from crosslayer.emergence import EMERGENCE_ALPHAS
from crosslayer.errors import CrosslayerError
from crosslayer.experiments.study_a.comparison import SCORE_FEATURES
from crosslayer.experiments.study_a.decomposition import (
    LAG_RANK,
    MAX_LAG,
    SPLICE_CONTEXTS,
    SWEEP_MAX_LAG,
)
from crosslayer.experiments.study_a.hooks import check_order, pick_target, sweep_hooks, sweep_tokens
from crosslayer.fs import check_dir_path
from crosslayer.model.hooks import parse_hook
from crosslayer.model.shape import ModelInfo, checked_info, model_info
from crosslayer.probes import FEATURE_CHUNK as PROBE_FEATURE_CHUNK
from crosslayer.rundir import DICTIONARIES
from crosslayer.sae.load import check_sae_spec
from crosslayer.sae.train import SAETrainConfig
from crosslayer.store.collect import SHARD_TOKENS as STORE_SHARD_TOKENS
from crosslayer.store.format import META

# --------------------------------------------------------------------------------------------
# calibration: every figure of the cost model, with the measurement it came from, lives in
# crosslayer/data/plan_calibration.json; the sizes the stages use are imported from them.


def _calibration() -> dict[str, Any]:
    text = resources.files("crosslayer").joinpath("data/plan_calibration.json").read_text()
    return dict(json.loads(text))


_CAL = _calibration()
BENCH_PEAK_GFLOPS: float = _CAL["bench_peak_gflops"]["value"]
EFFICIENCY: dict[str, float] = {k: v["value"] for k, v in _CAL["efficiency"].items()}
WRITE_BYTES_PER_S: float = _CAL["write_bytes_per_s"]["value"]
LOAD_S_PER_GB: float = _CAL["load_s_per_gb"]["value"]
TOKENISE_S_PER_TOKEN: float = _CAL["tokenise_s_per_token"]["value"]
DEQUANTISE_S_PER_PARAM: float = _CAL["dequantise_s_per_param"]["value"]
REPORT_S: float = _CAL["report_s"]["value"]
REPORT_S_PER_FEATURE: float = _CAL["report_s_per_feature"]["value"]
SAE_WARMUP_S: float = _CAL["sae_warmup_s"]["value"]
PROBE_S_PER_FEATURE: float = _CAL["probe_s_per_feature"]["value"]
ALIVE_FRACTION: float = _CAL["alive_fraction"]["value"]
SCORE_S_PER_FEATURE_TOKEN: float = _CAL["score_s_per_feature_token"]["value"]

# The stages' own sizes, from where they are defined (docs/store_format.md for the header).
SHARD_TOKENS = STORE_SHARD_TOKENS  # study A collects with the store's default
NPY_HEADER = 128  # bytes of a .npy format-1.0 header for these shapes
SHUFFLE_BUFFER: int = SAETrainConfig.model_fields["shuffle_buffer"].default
FEATURE_CHUNK = PROBE_FEATURE_CHUNK  # study A probes with FeatureProbes' default
# Cross-fitted logistic probes (crosslayer.crossfit): mean L-BFGS iterations per fit with the
# Jacobi preconditioner at probes.tol 1e-4 (12.9 over 300 real features x 5 folds of the
# default run), and the share of a training set's token rows left once identical rows are
# merged, for hook_embed as the source (10,925 distinct of 63,933 tokens in the default run's
# store; benchmarks/results/crossfit_real.md). Other sources have no repeated rows.
LOGISTIC_ITERATIONS = 13
MERGED_SHARE_EMBED = 0.17


# --------------------------------------------------------------------------------------------
# the plan


@dataclass
class StagePlan:
    """One stage of the run: what it processes, writes, computes and how long it should take."""

    name: str
    what: str
    tokens: int  # tokens the stage processes (SAE training: epochs x train tokens)
    disk_bytes: int  # bytes it leaves on disk
    flops: float
    seconds: float
    hooks: list[str] = field(default_factory=list)


@dataclass
class RunPlan:
    """The plan of one ``crosslayer run``; :meth:`table` and :meth:`summary` print it."""

    model: str
    shape: dict[str, Any]
    shape_source: str
    params: int
    model_cached: bool
    device: str
    gflops: float
    gflops_source: str
    source: str
    target: str
    hooks: list[str]
    sweep_hooks: list[str]
    n_tokens: int
    n_train: int
    n_heldout: int
    n_sweep: int
    sae_training_tokens: int  # per SAE: epochs x train tokens
    stages: list[StagePlan]
    memory_terms: dict[str, int]
    peak_memory_bytes: int
    notes: list[str] = field(default_factory=list)

    @property
    def disk_bytes(self) -> int:
        return sum(s.disk_bytes for s in self.stages)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def flops(self) -> float:
        return sum(s.flops for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, totals included."""
        out = asdict(self)
        out |= {"disk_bytes": self.disk_bytes, "seconds": self.seconds, "flops": self.flops}
        return out

    def summary(self) -> str:
        """The one-line total."""
        extra = [h for h in self.sweep_hooks if h not in self.hooks]
        sweep = f" (+ {len(extra)} sweep hooks)" if extra else ""
        return (
            f"plan: {self.n_tokens:,} tokens, hooks {' + '.join(self.hooks)}{sweep}; "
            f"disk {_gb(self.disk_bytes)}; peak memory ~{_gb(self.peak_memory_bytes)}; "
            f"estimated time ~{_duration(self.seconds)} on {self.device} "
            f"({'measured' if self.gflops_source.startswith('measured') else 'at'} "
            f"{self.gflops:,.0f} GFLOP/s)"
        )

    def table(self) -> Any:
        """A rich table: one row per stage, then the total."""
        table = Table(
            title=f"Plan: {self.model} ({self.params / 1e6:,.0f}M params, d_model "
            f"{self.shape['d_model']}, {self.shape['n_layers']} blocks), {self.source} → "
            f"{self.target}",
            caption=self._caption(),
            caption_justify="left",
        )
        for name, justify in (
            ("stage", "left"),
            ("tokens", "right"),
            ("hooks", "left"),
            ("disk", "right"),
            ("GFLOP", "right"),
            ("time", "right"),
        ):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for s in self.stages:
            table.add_row(
                s.what,
                f"{s.tokens:,}" if s.tokens else "–",
                str(len(s.hooks)) if s.hooks else "–",
                _gb(s.disk_bytes) if s.disk_bytes else "–",
                f"{s.flops / 1e9:,.0f}" if s.flops else "–",
                _duration(s.seconds),
            )
        table.add_section()
        table.add_row(
            "total",
            f"{self.n_tokens:,}",
            f"{len(set(self.hooks) | set(self.sweep_hooks))} hooks",
            _gb(self.disk_bytes),
            f"{self.flops / 1e9:,.0f}",
            f"~{_duration(self.seconds)}",
            style="bold",
        )
        return table

    def _caption(self) -> str:
        terms = sorted(self.memory_terms.items(), key=lambda kv: -kv[1])
        lines = [
            f"tokens: {self.n_tokens:,} collected (~{self.n_train:,} train / ~"
            f"{self.n_heldout:,} held-out; split by document, so approximate); sweep store at "
            f"most {self.n_sweep:,} tokens (the first whole documents, same pass); each SAE "
            f"trains on {self.sae_training_tokens:,} tokens",
            f"hooks: store {_hooks(self.hooks)}"
            + (f"; sweep store {_hooks(self.sweep_hooks)}" if self.sweep_hooks else ""),
            f"peak memory ~{_gb(self.peak_memory_bytes)} (estimate; main terms: "
            + ", ".join(f"{k} {_gb(v)}" for k, v in terms[:6])
            + ")",
            f"time: each stage's FLOPs / ({self.gflops:,.0f} GFLOP/s, {self.gflops_source}, "
            "x an efficiency calibrated on measured runs), plus store writes and fixed costs",
            f"model shape from {self.shape_source}",
            *self.notes,
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        buf = StringIO()
        Console(file=buf, width=120, color_system=None).print(self.table())
        return buf.getvalue() + self.summary()


def _gb(n: float) -> str:
    if n >= 1e8:
        return f"{n / 1e9:.2f} GB"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def _duration(s: float) -> str:
    if s < 1:
        return "<1 s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min" if s < 600 else f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _hooks(hooks: list[str]) -> str:
    if len(hooks) <= 3:
        return ", ".join(hooks)
    return f"{hooks[0]}, {hooks[1]} … {hooks[-1]} ({len(hooks)})"


# --------------------------------------------------------------------------------------------
# throughput


def measure_gflops(d_model: int, device: str = "cpu", seconds: float = 0.3) -> float:
    """Best float32 matmul GFLOP/s over ``seconds`` of [2048, d] @ [d, 2048] products.

    The inner dimension is the model's width, as in the forward's projections. On the project
    box this shape reaches 0.93x the 2048³ peak the efficiency factors are relative to
    (interleaved runs, median of 8): inside the factors' own noise, so it is used as is.
    """
    dev = torch.device(device)
    n = 2048
    a = torch.randn(n, d_model, device=dev)
    b = torch.randn(d_model, n, device=dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    a @ b  # warm-up (thread pool, cuBLAS handle)
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2 * n * n * d_model / max(time.perf_counter() - start, 1e-9))
    return best / 1e9


# --------------------------------------------------------------------------------------------
# bytes


def store_bytes(n_tokens: int, dims: list[int], dtype: str) -> int:
    """Bytes of a store directory: activations + per-token metadata + headers + manifest."""
    per_value = 2 if dtype == "float16" else 4
    per_token = sum(dims) * per_value + sum(
        cast("np.dtype[Any]", dt).itemsize for dt in META.values()
    )
    n_shards = max(1, math.ceil(n_tokens / SHARD_TOKENS))
    files = n_shards * (len(dims) + len(META))
    # manifest: ~2.3 kB of config and identity, ~100 bytes per file hash
    return n_tokens * per_token + files * NPY_HEADER + 2300 + 100 * files


def _sae_step_flops(d: int, width: int, arch: str, target_l0: float | None) -> float:
    """FLOPs per training token: JumpReLU's dense step (encoder and decoder, forward and
    backward: 6 products of ``d x width``); TopK's sparse step (``sae.sparse_topk``: the dense
    encoder forward, then 5 products over the k selected latents)."""
    if arch == "topk":
        return 2 * d * width + 5 * 2 * d * int(target_l0 or 0)
    return 6 * 2 * d * width


def sae_bytes(width: int, d: int, arch: str) -> int:
    """safetensors weights (W_enc, W_dec, b_enc, b_dec, JumpReLU threshold), sparsity, JSON."""
    params = 2 * width * d + width + d + (width if arch == "jumprelu" else 0)
    return 4 * params + 300 + (4 * width + 80) + 2800


# --------------------------------------------------------------------------------------------
# FLOPs per stage (the counts the efficiency factors were calibrated with)


def _blocks_run(hook: str) -> int:
    """Blocks a forward runs to reach ``hook`` (it stops there)."""
    p = parse_hook(hook)
    if p.layer is None:
        return 0
    return p.layer if p.kind == "resid_pre" else p.layer + 1


def _collect_stage(
    ctx: _Ctx, n: int, hooks: list[str], n_sweep: int, sweep: list[str]
) -> StagePlan:
    """One forward pass over ``n`` tokens fills the main store and the sweep store (its first
    ``n_sweep`` tokens at every sweep hook); its cost: that forward and both stores' writes."""
    cfg, d = ctx.cfg, ctx.shape.d_model
    deepest = max(_blocks_run(h) for h in [*hooks, *sweep])
    flops = n * ctx.shape.forward_flops(deepest, cfg.data.context_len)
    disk = store_bytes(n, [d] * len(hooks), cfg.data.store_dtype)
    if sweep:
        disk += store_bytes(n_sweep, [d] * len(sweep), cfg.sweep.dtype)
    seconds = ctx.time(flops, "collect") + disk / WRITE_BYTES_PER_S
    what = "collect store" + (" + sweep store (one pass)" if sweep else "")
    return StagePlan("collect", what, n, disk, flops, seconds, list(dict.fromkeys(sweep + hooks)))


@dataclass
class _Ctx:
    cfg: RunConfig
    shape: Any
    gflops: float

    def time(self, flops: float, kind: str) -> float:
        return flops / (EFFICIENCY[kind] * self.gflops * 1e9)


def _check_layer(hook: str, n_layers: int) -> None:
    """A valid hook name whose block (if any) the model has."""
    layer = parse_hook(hook).layer
    if layer is not None and layer >= n_layers:
        raise CrosslayerError(
            f"hook {hook} is past the model's last block ({n_layers} blocks)",
            f"use a block between 0 and {n_layers - 1}",
        )


def _resolve_hooks(cfg: RunConfig, n_layers: int, notes: list[str]) -> tuple[str, str]:
    """(source, target) as the run will resolve them, checked against the model's depth.

    The run's own rules (:mod:`crosslayer.experiments.study_a.hooks`); only the check against
    the model differs, as there is no model loaded to validate the names.
    """
    target = pick_target(cfg, n_layers)
    if cfg.sae is not None and cfg.target is None:
        notes.append(f"target assumed {target}: the run takes the --sae's own hook")
    for hook in (cfg.source, target):
        _check_layer(hook, n_layers)
    check_order(cfg.source, target)
    return cfg.source, target


def check_run(cfg: RunConfig, model: Any = None) -> None:
    """Everything about a run that can be checked before its directory exists and without the
    model's weights: device, model (path, file type, hub cache or network), hooks against the
    model's depth, the --sae spec, the corpus (opened, its first document read) and --out.

    :class:`RunConfig`'s own validator has already checked the rules between keys; together
    they make a bad run fail in seconds, leaving nothing behind.
    """
    resolve_device(cfg.device)
    info = checked_info(cfg.model) if model is None else model_info(cfg.model, model)
    n_layers = info.shape.n_layers
    if cfg.sae is None or cfg.target is not None:
        _resolve_hooks(cfg, n_layers, [])
    else:  # the target is the SAE's own hook, known once it is loaded
        _check_layer(cfg.source, n_layers)
    if cfg.sae is not None:
        check_sae_spec(cfg.sae)
    load_corpus(cfg.corpus, max_doc_chars=cfg.data.max_doc_chars)
    if cfg.out:
        check_dir_path(cfg.out)


def plan_run(
    cfg: RunConfig,
    *,
    model: Any = None,
    gflops: float | None = None,
    info: ModelInfo | None = None,
) -> RunPlan:
    """The plan of ``crosslayer run`` with ``cfg``: reads no weights and no corpus.

    ``model``: an already loaded model (its shape is used). ``gflops``: skip the 0.3 s matmul
    probe and use this throughput (e.g. ``BENCH_PEAK_GFLOPS`` to estimate for the project box).
    ``info``: the model's shape, if already known.
    """
    info = info or model_info(cfg.model, model)
    shape = info.shape
    device = resolve_device(cfg.device)
    notes: list[str] = []
    if gflops is None:
        gflops, how = measure_gflops(shape.d_model, str(device)), "measured (0.3 s of fp32 matmuls)"
    else:
        how = "given"
    itemsize = model_itemsize(cfg)
    if device.type == "cuda":
        notes.append(
            "on cuda: the efficiency factors come from CPU runs and the model runs in bf16, so "
            "treat the time as a rough figure"
        )
    elif itemsize == 2:
        notes.append(
            "model in 16 bits on cpu: the time is estimated at the float32 throughput (bf16 "
            "measured faster with AVX512-BF16, BENCHMARKS.md)"
        )
    if cfg.sae is not None:
        notes.append("the pretrained SAE (--sae): its probes are not in the estimate")
    ctx = _Ctx(cfg, shape, gflops)
    source, target = _resolve_hooks(cfg, shape.n_layers, notes)
    d = shape.d_model
    n = cfg.tokens
    n_heldout = round(n * cfg.data.heldout_frac)
    n_train = n - n_heldout
    n_sweep = sweep_tokens(cfg) if cfg.sweep.enabled else 0
    sweep = sweep_hooks(source, target) if cfg.sweep.enabled else []

    # tokenised before collecting: the main split, the sweep's extent and its split
    stages = [_load_stage(cfg, info, n + 2 * n_sweep, itemsize)]
    stages.append(_collect_stage(ctx, n, [source, target], n_sweep, sweep))
    stages += _transcoder_stages(ctx, n_train, n_heldout)
    st = cfg.sae_training
    alive = ALIVE_FRACTION * st.width
    m = min(alive, cfg.probes.max_features or alive)
    # every dictionary (baseline, residual, placebo) once per seed (experiments/study_a/saes.py)
    for name in [n if k == 0 else f"{n}_seed{k}" for n in DICTIONARIES for k in range(st.seeds)]:
        flops: float = _sae_step_flops(d, st.width, st.arch, st.target_l0) * st.epochs * n_train
        warmup = SAE_WARMUP_S if name == "baseline" else 0.0
        stages.append(
            StagePlan(
                f"sae_{name}",
                f"{name} SAE",
                st.epochs * n_train,
                sae_bytes(st.width, d, st.arch),
                flops,
                ctx.time(flops, "sae") + warmup,
            )
        )
    n_fit = n_train + n_heldout  # cross-fitted: every token is fitted on and scored
    K = cfg.crossfit.n_folds
    merged = MERGED_SHARE_EMBED if cfg.source == "hook_embed" else 1.0
    for name in ("baseline", "residual"):
        flops = (
            # L-BFGS on K training sets: X w and X' r per iteration (identical rows merged)
            4 * LOGISTIC_ITERATIONS * K * n_fit * d * m * (K - 1) / K * merged
            + 2 * n_fit * d * (d + 2 * m)  # ridge probes and the C rule: X'X, X'F per fold
            + 2 * n * d * st.width  # encode every token with the SAE
        )
        a = cfg.analysis
        # features json + sae json, and features/<sae>.parquet + .csv (~120 B per feature)
        disk = int(175 * m + a.n_extreme * 2 * a.top_k * 300 + 2000 + 1400 + 120 * alive)
        stages.append(
            StagePlan(
                f"probes_{name}",
                f"probes, {name} SAE",
                n_fit + n_heldout,
                disk,
                flops,
                ctx.time(flops, "probes") + PROBE_S_PER_FEATURE * m,
            )
        )
    if cfg.sweep.enabled:
        targets = len(sweep) - 1
        flops = 2 * n_sweep * (d + 1) * (d + 1 + targets * d)  # X'X and X'Y, both splits
        stages.append(
            StagePlan(
                "depth_sweep",
                "depth sweep",
                n_sweep,
                1000 + 130 * targets,
                flops,
                ctx.time(flops, "depth_sweep"),
            )
        )
        if cfg.emergence.enabled:
            # stages/emergence.json: ~10 numbers per scored feature and layer of seed 0, R²
            # and AUROC per layer of each further seed's sampled features, ~250 B of taxonomy
            # per further seed's scored feature, 3 plots (9.06 MB measured on a default run,
            # 9.0 MB from this)
            n_dicts, more = len(DICTIONARIES), cfg.sae_training.seeds - 1
            sampled = min(m, cfg.emergence.seed_features)
            disk = int(
                100 * n_dicts * m * (targets + 1)
                + n_dicts * more * (70 * sampled * targets + 250 * m)
                + 170_000
            )
            flops = _emergence_flops(cfg, d, m, n_sweep, len(sweep))
            stages.append(
                StagePlan(
                    "emergence",
                    "emergence",
                    n_sweep,
                    disk,
                    flops,
                    ctx.time(flops, "emergence"),
                )
            )
    stages.append(_scoring_stage(ctx, n, m))
    flops = _decomposition_flops(cfg, shape, n, n_sweep, len(sweep))
    stages.append(
        StagePlan(
            "decomposition",
            "layer decomposition",
            n + n_sweep,
            30_000,
            flops,
            ctx.time(flops, "decomposition"),
        )
    )
    stages.append(_report_stage(cfg, d, 2 * m, stages))
    memory = _memory(cfg, shape, info, n_train, n_sweep, len(sweep), m)
    return RunPlan(
        model=cfg.model,
        shape=shape.to_dict(),
        shape_source=info.source,
        params=shape.params(),
        model_cached=info.cached,
        device=str(device),
        gflops=gflops,
        gflops_source=how,
        source=source,
        target=target,
        hooks=[source, target],
        sweep_hooks=sweep,
        n_tokens=n,
        n_train=n_train,
        n_heldout=n_heldout,
        n_sweep=n_sweep,
        sae_training_tokens=st.epochs * n_train,
        stages=stages,
        memory_terms=memory,
        peak_memory_bytes=sum(memory.values()),
        notes=notes,
    )


def _nested_cv_products(K: int, n_alphas: int) -> int:
    """``d x d`` by ``d x m`` products per feature block of a nested grouped CV ridge
    (:class:`crosslayer.crossfit.CrossFitRidge`): the alpha path of each of the K(K-1) inner
    fits, the projections of the K(K-1)/2 inner training sets, and the K outer fits."""
    return K * (K - 1) * (n_alphas + 1) + K * (K - 1) // 2 + 3 * K


def _emergence_flops(cfg: RunConfig, d: int, m: float, n_sweep: int, n_layers: int) -> float:
    """The emergence matrix (every scored feature of seed 0 of each dictionary, and the
    sampled features of the further seeds, from every layer) and the taxonomy's context
    ridge (every seed's features); ``m`` features per dictionary and seed."""
    em, K = cfg.emergence, cfg.crossfit.n_folds
    n_alphas = len(em.alphas) if em.alphas else len(EMERGENCE_ALPHAS)
    seeds = cfg.sae_training.seeds
    n_dicts = len(DICTIONARIES)
    m_matrix = n_dicts * (m + (seeds - 1) * min(m, em.seed_features))
    # the alpha path, X'F and the out-of-fold predictions behind the AUROC
    per_feature = 2 * d * d * _nested_cv_products(K, n_alphas) + 4 * n_sweep * d
    d_ctx = min(d, em.context_dims) * (em.context_k + 1)
    per_context = 2 * d_ctx * d_ctx * _nested_cv_products(K, n_alphas) + 2 * n_sweep * d_ctx
    return n_layers * m_matrix * per_feature + n_dicts * seeds * m * per_context


def _decomposition_flops(cfg: RunConfig, shape: Any, n: int, n_sweep: int, n_layers: int) -> float:
    """Ridge predictors of the layer decomposition (the target with MAX_LAG lags on the main
    store, the sweep's other layers with SWEEP_MAX_LAG on the sweep store) and the splice's
    forward passes (SPLICE_CONTEXTS contexts per predictor, plus the clean and mean-ablated)."""
    d, K = shape.d_model, cfg.crossfit.n_folds
    n_alphas = len(DECOMPOSITION_ALPHAS)
    r = min(d, LAG_RANK)

    def layer(rows: int, lags: int) -> float:
        w = d + lags * (r + 1)
        stats = 2 * rows * w * (w + d)  # X'X and X'Y of the widest design, per fold
        fits = sum(
            (K + K * (K - 1) // 2) * 4 * (d + j * (r + 1)) ** 3  # eigendecompositions
            + K * (K - 1) * n_alphas * 2 * (d + j * (r + 1)) ** 2 * d  # alpha paths
            for j in range(lags + 1)
        )
        return stats + fits

    predictors = 3 + MAX_LAG + 2  # mean, linear, token, context_k; clean and mean-ablated
    splice = (
        predictors
        * SPLICE_CONTEXTS
        * cfg.data.context_len
        * shape.forward_flops(shape.n_layers, cfg.data.context_len)
    )
    sweep = (n_layers - 1) * layer(n_sweep, SWEEP_MAX_LAG) if n_layers else 0.0
    return layer(n, MAX_LAG) + sweep + splice


def _scoring_stage(ctx: _Ctx, n: int, m: float) -> StagePlan:
    """Token-lookup scores of every dictionary and seed (``SCORE_FEATURES`` sampled scorable
    features each, with the lookup's permutations): sparse group sums, timed per feature and
    token rather than counted in FLOPs."""
    st = ctx.cfg.sae_training
    k = min(m, SCORE_FEATURES)
    n_saes = len(DICTIONARIES) * st.seeds
    seconds = SCORE_S_PER_FEATURE_TOKEN * n_saes * k * n
    # stages/docstats_<sae>.npz: ~1,650 B per scored feature (843,572 B for 512 measured)
    disk = int(n_saes * (1650 * k + 1000))
    return StagePlan("scoring", "dictionary scoring", n, disk, 0.0, seconds)


def model_itemsize(cfg: RunConfig) -> int:
    """Bytes per weight of the model as the run will load it (``model_dtype`` on its device)."""
    with warnings.catch_warnings():  # the run itself warns about emulated bf16, not the plan
        warnings.simplefilter("ignore")
        dtype = resolve_dtype(cfg.model_dtype, resolve_device(cfg.device))
    return int(torch.empty((), dtype=dtype).element_size())


def _load_stage(cfg: RunConfig, info: ModelInfo, tokenised: int, itemsize: int) -> StagePlan:
    weights = info.shape.params() * itemsize
    seconds = LOAD_S_PER_GB * weights / 1e9 + TOKENISE_S_PER_TOKEN * tokenised
    what = "load model, plan split"
    if not info.cached:
        seconds += DEQUANTISE_S_PER_PARAM * info.shape.params()
        what = "convert model to cache (once), load, plan split"
    return StagePlan("load", what, 0, info.cache_bytes, 0.0, seconds)


def _transcoder_stages(ctx: _Ctx, n_train: int, n_heldout: int) -> list[StagePlan]:
    tc, d = ctx.cfg.transcoder, ctx.shape.d_model
    n = n_train + n_heldout
    n_models = 1 + tc.study_recipe + tc.mlp
    # ridge: float64 X'X, X'Y over train, then every token predicted twice (metrics, residuals)
    flops = 2 * n_train * (d + 1) * (2 * d + 1) + 2 * 2 * n * d * d
    disk = (d * d + d) * 8 + 600 + 4000 + 30 * d * n_models  # transcoder.npz + .json
    out = [
        StagePlan(
            "transcoder", "ridge transcoder", n_train, disk, flops, ctx.time(flops, "transcoder")
        )
    ]
    if tc.study_recipe:
        k = min(tc.adam_tokens or n_train, n_train)
        flops = 6 * tc.adam_epochs * k * d * d + 2 * n * d * d
        out.append(
            StagePlan(
                "transcoder_adam",
                "Adam transcoder (study)",
                tc.adam_epochs * k,
                0,
                flops,
                ctx.time(flops, "transcoder_adam"),
            )
        )
    if tc.mlp:
        flops = 6 * tc.mlp_max_epochs * n_train * tc.mlp_hidden * 2 * d + 4 * n * tc.mlp_hidden * d
        out.append(
            StagePlan(
                "transcoder_mlp",
                "MLP transcoder",
                tc.mlp_max_epochs * n_train,
                0,
                flops,
                ctx.time(flops, "transcoder_mlp"),
            )
        )
    return out


def _report_stage(cfg: RunConfig, d: int, m_total: float, stages: list[StagePlan]) -> StagePlan:
    """results.json, plots, report.html, config.json, checksums.json (sizes fitted to runs)."""
    stage_json = sum(s.disk_bytes for s in stages if s.name.startswith("probes_")) + 30 * d * 3
    results = 1.15 * stage_json + 15_000
    emergence = cfg.sweep.enabled and cfg.emergence.enabled
    # study A's four figures and the variance split; the emergence heatmap, layers and
    # scatter figures (~165 kB on the tiny run) when the sweep feeds the emergence stage
    plots = 265_000 + 80 * m_total + (165_000 if emergence else 0)
    # dashboards: the most and least predictable features of both SAEs, and with emergence
    # the typical features of each of its 4 classes for baseline, residual and placebo
    dashboards = 2 * cfg.analysis.n_extreme * 2 + (
        cfg.emergence.n_examples * 4 * 3 if emergence else 0
    )
    report = 4 / 3 * plots + 100_000 + dashboards * 8_000
    disk = int(results + plots + report + 4_000)
    seconds = REPORT_S + REPORT_S_PER_FEATURE * m_total
    return StagePlan("report", "results, plots, report", 0, disk, 0.0, seconds)


# --------------------------------------------------------------------------------------------
# memory


def _memory(
    cfg: RunConfig,
    shape: Any,
    info: ModelInfo,
    n_train: int,
    n_sweep: int,
    n_sweep_hooks: int,
    m: float,
) -> dict[str, int]:
    """Peak resident memory as a sum of named terms (bytes).

    The process holds the runtime, tokenizer and weights throughout; on top of them the
    larger of two phases: collecting (one shard's activations, kept as a list of batches and
    concatenated, plus one batch's forward) or analysing (source, target and residual arrays
    in float32, plus the largest of SAE training, probes and transcoder statistics).
    """
    d, n = shape.d_model, cfg.tokens
    # One pass fills both stores: a shard is computed at every hook either store needs there
    # (float32, as batches and then concatenated), and a float16 store casts its own copy.
    hooks = n_sweep_hooks if n_sweep else 2
    shard = 2 * min(SHARD_TOKENS, n) * hooks * d * 4
    for rows, k, dtype in ((n, 2, cfg.data.store_dtype), (n_sweep, n_sweep_hooks, cfg.sweep.dtype)):
        if dtype == "float16":
            shard += min(SHARD_TOKENS, rows) * k * d * 2
    b, t = cfg.data.batch_size, cfg.data.context_len
    forward = (
        b
        * t
        * 4
        * (
            4 * d
            + (shape.n_heads + 2 * shape.n_kv_heads) * shape.head_dim
            + 3 * shape.d_ff
            + shape.n_heads * t
        )
    )
    collecting = shard + forward

    st = cfg.sae_training
    sae = (
        2 * min(SHUFFLE_BUFFER, n_train) * d * 4  # shuffle buffer and its permuted copy
        + 4 * (2 * st.width * d + st.width + d) * 4  # parameters, gradients, Adam's two moments
        + 4 * st.batch_size * st.width * 4  # one batch's latents, forward and backward
    )
    n_fit = n  # cross-fitted: all tokens
    probes = (
        2 * n_fit * d * 4  # the fit sample and its standardised copy
        + 6 * n_fit * min(FEATURE_CHUNK, m) * 4  # targets, logits, probabilities, gradients
        + 3 * n * st.target_l0 * 12  # sparse feature activations (train, held-out, stacked)
    )
    stats = 4 * (d + 1) * (2 * d + 1) * 8  # float64 X'X and X'Y of train and held-out
    analysing = 3 * n * d * 4 + max(sae, probes, stats)

    weights = shape.params() * model_itemsize(cfg)
    terms = {
        "runtime": 570_000_000,  # RSS after importing torch, transformers, sae-lens..., measured
        "tokenizer": 1160 * shape.vocab_size,  # Gemma 3's 262k entries: +305 MB, measured
        "model weights": weights,
    }
    if collecting > analysing:
        terms["shard being collected + forward"] = collecting
    else:
        terms["source, target, residual arrays"] = 3 * n * d * 4
        biggest = max(
            ("SAE training", sae),
            ("probes", probes),
            ("transcoder stats", stats),
            key=lambda kv: kv[1],
        )
        terms[biggest[0]] = biggest[1]
    # allocator fragmentation and temporaries: calibrated below against measured peaks
    terms["temporaries (+20%)"] = int(0.2 * (terms["model weights"] + max(collecting, analysing)))
    return {k: int(v) for k, v in terms.items()}
