"""``train_sae``: JumpReLU or TopK SAEs trained by sae-lens's ``SAETrainer``.

sae-lens does the work: its ``JumpReLUTrainingSAE`` / ``TopKTrainingSAE`` (losses, straight-
through threshold gradients, TopK auxiliary loss), ``SAETrainer.step`` (Adam, gradient
clipping, LR and L0-coefficient schedules, dead-latent tracking) and ``ActivationScaler``
(normalisation to E|x| = sqrt(d), folded into the weights at the end). We drive the loop
through the trainer's public seams (``step``, ``maybe_reset_sparsity``,
``save_trainer_state``/``load_trainer_state``, ``set_final_sae_metadata``) the way sae-lens's
own ``MultiSAETrainer`` does, rather than calling ``fit()``, for three things ``fit()`` lacks:
atomic checkpoints that record the data position (exact resume after a crash), a rich
progress bar with loss/L0/explained variance, and a final artefact that appears only when
complete. benchmarks/bench_sae_train.py measured a hand-written loop; see
benchmarks/results/sae_train.md for why we did not switch. Two speed-ups keep sae-lens's
objective: TopK SAEs train through :class:`~crosslayer.sae.sparse_topk.SparseTopKTrainingSAE`
(decoder and gradients on the k selected latents; ``sparse_topk``), and the trainer's Adam is
rebuilt fused (:func:`_optimizer`).

Two additions for short (CPU) runs, both tuned on Gemma 3 270M residuals (trials in that
file): ``b_dec`` starts at the mean activation (``init_b_dec``), and the JumpReLU threshold
has its own Adam learning rate (``jumprelu_threshold_lr_scale``). Without them L0 overshot
the target many times over.

Under ``torchrun`` (a process group is active) training is data parallel: every rank reads
the same seeded stream, takes its block of each global batch, and the gradients are summed
over ranks, weighted by each rank's share of the rows (``distributed.GradientSum``), before
the trainer clips and steps; the firing counters are summed too. Every sae-lens loss we use
is a mean over rows of per-row terms (MSE, the JumpReLU L0 penalty, quadratic or not, and
the TopK auxiliary loss), so this is the single-process gradient up to summation order.
Rank 0 writes checkpoints and the SAE; every rank returns the SAE it wrote.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from safetensors.torch import save_file

import crosslayer
from crosslayer import distributed
from crosslayer.console import console_err
from crosslayer.device import resolve_device
from crosslayer.errors import ConfigMismatchError, CrosslayerError
from crosslayer.fs import atomic_dir, atomic_write_json
from crosslayer.provenance import config_hash, versions
from crosslayer.rules import check_sae_lr, check_sae_sparsity, check_steps
from crosslayer.sae.data import Source, as_source, batches
from crosslayer.stage_configs import SAETrainConfig


def check_train_config(cfg: SAETrainConfig) -> None:
    """Range checks of the settings alone, as one-line errors before any data is read."""
    check_sae_sparsity(cfg.arch, cfg.width, cfg.target_l0)
    for name in ("batch_size", "epochs", "n_batches_for_norm_estimate", "dead_feature_window"):
        if getattr(cfg, name) < 1:
            raise CrosslayerError(f"{name} must be at least 1", f"set {name} >= 1")
    check_sae_lr(cfg.lr, cfg.l0_coefficient)
    if cfg.jumprelu_threshold_lr_scale <= 0:
        raise CrosslayerError(
            "jumprelu_threshold_lr_scale must be positive", "use e.g. 10 (the default)"
        )
    if cfg.batch_size < distributed.world_size():
        raise CrosslayerError(
            f"batch_size {cfg.batch_size} is less than the {distributed.world_size()} processes",
            "raise batch_size or start fewer processes (torchrun --nproc-per-node)",
        )
    if cfg.n_tokens is not None:
        check_steps(cfg.n_tokens, cfg.batch_size, "n_tokens")


def parse_train_config(cfg: SAETrainConfig | dict[str, Any] | None) -> SAETrainConfig:
    """``cfg`` validated (keys, types, then :func:`check_train_config`) as one-line errors."""
    try:
        parsed = SAETrainConfig.model_validate(cfg or {})
    except Exception as e:  # pydantic.ValidationError: wrong key or type
        raise CrosslayerError(
            f"bad SAE training config: {_first_error(e)}",
            "see crosslayer.sae.SAETrainConfig for valid keys",
        ) from e
    check_train_config(parsed)
    return parsed


def _training_sae(
    cfg: SAETrainConfig, d_in: int, device: torch.device, metadata: dict[str, Any]
) -> Any:
    # local: start-up cost (sae-lens)
    from sae_lens import (
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    from crosslayer.sae.sparse_topk import SparseTopKTrainingSAE

    common: dict[str, Any] = dict(
        d_in=d_in,
        d_sae=cfg.width,
        device=str(device),
        normalize_activations=cfg.normalize_activations,
        metadata=SAEMetadata(**metadata),
    )
    # The SAE's initial weights come from the global RNG: seed it locally, leave it as it was.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        if cfg.arch == "topk":
            topk_cfg = TopKTrainingSAEConfig(k=int(cfg.target_l0 or 0), **common)
            return SparseTopKTrainingSAE(topk_cfg) if cfg.sparse_topk else TopKTrainingSAE(topk_cfg)
        jcfg = JumpReLUTrainingSAEConfig(
            jumprelu_init_threshold=cfg.jumprelu_init_threshold,
            jumprelu_bandwidth=cfg.jumprelu_bandwidth,
            jumprelu_ste_to_input=cfg.jumprelu_ste_to_input,
            jumprelu_sparsity_loss_mode="step" if cfg.target_l0 is None else "quadratic",
            target_l0=cfg.target_l0,
            l0_coefficient=cfg.l0_coefficient,
            l0_warm_up_steps=0,  # set from l0_warm_up_frac once the step count is known
            **common,
        )
        return JumpReLUTrainingSAE(jcfg)


def train_sae(
    data: Any,
    cfg: SAETrainConfig | dict[str, Any] | None = None,
    out: str | Path | None = None,
    *,
    hook: str | None = None,
    model_identity: dict[str, Any] | None = None,
    reads: dict[str, Any] | None = None,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> Any:
    """Train an SAE on ``data`` and save it to ``out`` (opens with ``SAE.load_from_disk``).

    ``data``: an ActivationStore (with ``hook``; the train split is used), a ``[n, d]``
    tensor, an iterable of ``[batch, d]`` tensors (read into memory once), or a callable
    returning a fresh iterator (streamed every epoch). ``hook`` is recorded as the SAE's hook
    name (for a store it also selects the activations). ``reads``: what the SAE's input is
    when it is not the hook's activations themselves, recorded as ``crosslayer_input`` in
    its ``cfg.json`` metadata (e.g. ``{"kind": "residual", "source_hook": ..., "transcoder":
    ...}``); :func:`crosslayer.sae.load_sae` refuses to check such an SAE against a model's raw
    hook. Checkpoints go to ``{out}.ckpt/`` and
    a rerun of the same call resumes from the last one. Returns the trained sae-lens SAE.

    Under ``torchrun`` every rank calls this with the same arguments and gets the same SAE,
    equal to a single process's up to float32 summation order (module docstring); the
    ranks must share the file system of ``out``.
    """
    # local: start-up cost (sae-lens)
    from sae_lens import SAE
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    cfg = parse_train_config(cfg)
    if out is None:
        raise CrosslayerError("no output folder given", "pass out='runs/my_sae' (CLI: --out)")
    out = Path(out)
    if out.exists() and not overwrite:
        raise CrosslayerError(f"{out} already exists", "choose another --out or pass --overwrite")
    source = as_source(data, hook)
    device = resolve_device(cfg.device)
    total_tokens = cfg.n_tokens or source.n_tokens * cfg.epochs
    check_steps(total_tokens, cfg.batch_size)
    steps = total_tokens // cfg.batch_size
    run_hash = config_hash({"cfg": cfg.model_dump(), "data": source.identity, "hook": hook})
    metadata = _metadata(cfg, source, hook, model_identity, steps, run_hash)
    if reads is not None:
        metadata["crosslayer_input"] = dict(reads)

    sae = _training_sae(cfg, source.d, device, metadata)
    sae.cfg.l0_warm_up_steps = int(cfg.l0_warm_up_frac * steps) if cfg.arch == "jumprelu" else 0
    decay = int(cfg.lr_decay_frac * steps)
    trainer = SAETrainer(
        cfg=SAETrainerConfig(
            total_training_samples=steps * cfg.batch_size,
            train_batch_size_samples=cfg.batch_size,
            lr=cfg.lr,
            lr_end=0.0,
            lr_warm_up_steps=cfg.lr_warm_up_steps,
            lr_decay_steps=decay,
            device=str(device),
            dead_feature_window=cfg.dead_feature_window,
            feature_sampling_window=max(1, min(steps, 2000)),
        ),
        sae=sae,
        data_provider=iter(()),  # we feed batches through trainer.step()
    )
    _optimizer(trainer, sae, cfg, steps, decay)
    stream = batches(source, cfg.batch_size, seed=cfg.seed, buffer_tokens=cfg.shuffle_buffer)
    ckpt = Path(f"{out}.ckpt")
    served = _resume(ckpt, run_hash, sae, trainer) if resume else 0
    if resume and served == 0 and ckpt.exists() and distributed.rank() == 0:
        shutil.rmtree(ckpt)  # nothing usable in it (every rank found no position.json)
    for _ in range(served):  # replay the seeded stream up to where the checkpoint was taken
        next(stream)
    if served == 0:
        _init_from_data(cfg, source, sae, trainer, steps)

    every = max(1, steps // (cfg.n_checkpoints + 1)) if cfg.n_checkpoints else steps + 1
    grads = distributed.GradientSum(sae.parameters(), distributed.row_share(cfg.batch_size))
    show = progress and distributed.rank() == 0
    with grads, _Progress(show, steps, trainer.n_training_steps) as bar:
        while trainer.n_training_steps < steps:
            trainer.maybe_reset_sparsity()
            output = _step(trainer, next(stream), grads)
            served += 1
            trainer.n_training_steps += 1
            bar.update(trainer, output)
            if trainer.n_training_steps % every == 0 and trainer.n_training_steps < steps:
                distributed.on_rank_0(_checkpoint, ckpt, run_hash, served, sae, trainer)

    distributed.check_same_on_all_ranks(sae.state_dict().values(), "the trained SAE")
    if trainer.activation_scaler.scaling_factor is not None:
        sae.fold_activation_norm_scaling_factor(trainer.activation_scaler.scaling_factor)
    trainer.set_final_sae_metadata()
    sae.cfg.metadata.training_tokens = trainer.n_training_samples
    distributed.on_rank_0(_save, out, ckpt, cfg, run_hash, source, steps, sae, trainer)
    return SAE.load_from_disk(out, device=str(device))


def _step(trainer: Any, batch: torch.Tensor, grads: distributed.GradientSum) -> Any:
    """One training step on a global batch: under torchrun on this rank's rows, with the
    gradients summed by ``grads``'s hooks, then the trainer's counters made global."""
    if not distributed.active():
        return trainer.step(batch)
    samples, freq = trainer.n_training_samples, trainer.act_freq_scores.clone()
    since_fired = trainer.n_forward_passes_since_fired.clone()
    output = trainer.step(distributed.split_rows(batch))
    grads.check()
    # The trainer counted this rank's rows only: firing counts add up over ranks (integers
    # in float32, so exactly), and a latent fired this step if it fired on any rank. One
    # all_reduce carries both. n_frac_active_samples already counts the global batch.
    fired_here = (trainer.n_forward_passes_since_fired == 0).to(freq.dtype)
    total = distributed.all_reduce_sum(torch.cat([trainer.act_freq_scores - freq, fired_here]))
    counts, fired = total.to(freq.dtype).split(freq.numel())
    trainer.act_freq_scores = freq + counts
    trainer.n_forward_passes_since_fired = torch.where(fired > 0, 0.0, since_fired + 1)
    trainer.n_training_samples = samples + batch.shape[0]
    return output


def _save(
    out: Path,
    ckpt: Path,
    cfg: SAETrainConfig,
    run_hash: str,
    source: Source,
    steps: int,
    sae: Any,
    trainer: Any,
) -> None:
    """Write the finished SAE (sae-lens inference format + sparsity + training.json)
    atomically, then remove the checkpoints."""
    with atomic_dir(out) as tmp:
        sae.save_inference_model(tmp)

        save_file(
            {"sparsity": trainer.log_feature_sparsity.contiguous()}, tmp / "sparsity.safetensors"
        )
        atomic_write_json(
            tmp / "training.json",
            {
                "config": cfg.model_dump(),
                "config_hash": run_hash,
                "data": source.identity,
                "steps": steps,
                "tokens": trainer.n_training_samples,
                "final": {"l0": sae.cfg.metadata.l0, "dead": sae.cfg.metadata.num_dead_features},
                "processes": distributed.world_size(),
                "versions": versions(),
            },
        )
    shutil.rmtree(ckpt, ignore_errors=True)


@torch.no_grad()
def _init_from_data(
    cfg: SAETrainConfig, source: Source, sae: Any, trainer: Any, steps: int
) -> None:
    """Norm-scaling estimate and decoder-bias init, from a separately seeded stream (so they
    do not eat training batches; under torchrun every rank computes them on the same whole
    sample, so they agree without communication). ``b_dec`` starts at the mean of the
    (scaled) activations: residual streams carry a large constant offset (on Gemma 3 270M's
    blocks.12.hook_resid_post the mean is 85% of E|x|^2, nearly all in one dimension) that a
    zero-initialised bias, moving by about lr per step, cannot learn in a short run; the
    latents then learn it instead, all firing on every token."""
    n = min(cfg.n_batches_for_norm_estimate, steps)
    stream = batches(source, cfg.batch_size, seed=cfg.seed + 1, buffer_tokens=cfg.shuffle_buffer)
    sample = [next(stream) for _ in range(n)]
    scale = 1.0
    if cfg.normalize_activations == "expected_average_only_in":
        trainer.activation_scaler.estimate_scaling_factor(source.d, iter(sample), n)
        scale = trainer.activation_scaler.scaling_factor
    if cfg.init_b_dec == "mean":
        mean = torch.cat(sample).double().mean(0) * scale
        sae.b_dec.copy_(mean.to(sae.b_dec.dtype))


def _optimizer(trainer: Any, sae: Any, cfg: SAETrainConfig, steps: int, decay: int) -> None:
    """Replace the trainer's Adam by the same Adam, fused (one kernel for all parameters:
    1.5-2.0 ms a step against 13 ms for the per-tensor loop on the default profile's SAE;
    benchmarks/results/sae_train.md), with the JumpReLU threshold in its own group at
    lr x ``jumprelu_threshold_lr_scale``. The trainer's schedule is rebuilt on it and scales
    both groups alike."""
    # local: start-up cost (sae-lens)
    from sae_lens.training.optim import get_lr_scheduler

    groups: list[dict[str, Any]] = [{"params": list(sae.parameters())}]
    if cfg.arch == "jumprelu" and cfg.jumprelu_threshold_lr_scale != 1.0:
        others = [p for name, p in sae.named_parameters() if name != "threshold"]
        groups = [
            {"params": others},
            {"params": [sae.threshold], "lr": cfg.lr * cfg.jumprelu_threshold_lr_scale},
        ]
    trainer.optimizer = torch.optim.Adam(
        groups,
        lr=cfg.lr,
        betas=(trainer.cfg.adam_beta1, trainer.cfg.adam_beta2),
        fused=True,
    )
    trainer.lr_scheduler = get_lr_scheduler(
        trainer.cfg.lr_scheduler_name,
        lr=cfg.lr,
        optimizer=trainer.optimizer,
        warm_up_steps=cfg.lr_warm_up_steps,
        decay_steps=decay,
        training_steps=steps,
        lr_end=0.0,
        num_cycles=trainer.cfg.n_restart_cycles,
    )


def _metadata(
    cfg: SAETrainConfig,
    source: Source,
    hook: str | None,
    model_identity: dict[str, Any] | None,
    steps: int,
    run_hash: str,
) -> dict[str, Any]:
    model = model_identity or source.identity.get("model") or {}
    return {
        "hook_name": hook,
        "model_name": model.get("spec") if isinstance(model, dict) else None,
        "model_identity": model,
        "training_tokens": steps * cfg.batch_size,
        "seed": cfg.seed,
        "crosslayer_version": crosslayer.__version__,
        "crosslayer_config": cfg.model_dump(),
        "crosslayer_config_hash": run_hash,
        "dataset": source.identity,
    }


def _first_error(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        err = errors()[0]
        return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    return str(e).splitlines()[0]


def _checkpoint(ckpt: Path, run_hash: str, served: int, sae: Any, trainer: Any) -> None:
    """Weights + trainer state (optimizer, schedules, dead-latent counters, scaler) + data
    position, written atomically as ``{ckpt}/latest``."""
    with atomic_dir(ckpt / "latest") as tmp:
        sae.save_model(tmp)
        trainer.save_trainer_state(tmp)
        atomic_write_json(tmp / "position.json", {"config_hash": run_hash, "batches": served})


def _resume(ckpt: Path, run_hash: str, sae: Any, trainer: Any) -> int:
    """Load ``{ckpt}/latest`` if present; return how many batches it had consumed."""
    latest = ckpt / "latest"
    if not (latest / "position.json").is_file():
        return 0
    position = json.loads((latest / "position.json").read_text())
    if position.get("config_hash") != run_hash:
        raise ConfigMismatchError(
            f"checkpoint {latest} was made with a different config or data",
            f"rerun with the same settings, or delete {ckpt} to start afresh",
        )
    sae.load_weights_from_checkpoint(latest)
    trainer.load_trainer_state(latest)
    return int(position["batches"])


class _Progress:
    """rich progress bar showing loss, L0, explained variance (of the batch) and dead latents."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled, self.total, self.done = enabled, total, done

    def __enter__(self) -> _Progress:
        if self.enabled:
            self.bar = Progress(
                TextColumn("SAE"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[stats]}"),
                console=console_err,
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.total, completed=self.done, stats="")
        return self

    @torch.no_grad()
    def update(self, trainer: Any, output: Any) -> None:
        if not self.enabled:
            return
        step = trainer.n_training_steps
        stats = None
        if step % 10 == 0 or step == self.total:
            x, x_hat = output.sae_in.double(), output.sae_out.double()
            ev = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
            l0 = (output.feature_acts != 0).float().sum(-1).mean()
            dead = int(trainer.dead_neurons.sum())
            stats = f"loss {output.loss.item():.3g} L0 {l0:.1f} EV {ev:.3f} dead {dead}"
        if stats:
            self.bar.update(self.task, completed=step, stats=stats)
        else:
            self.bar.update(self.task, completed=step)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.stop()
