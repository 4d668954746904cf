"""Data parallelism under ``torchrun``: process-group helpers and all-reduced statistics.

``torchrun --nproc-per-node N -m crosslayer collect ...`` starts N copies of the CLI with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous address in the environment.
:func:`session` turns that into a process group (gloo on CPU, nccl on CUDA); without
those variables every helper here is a no-op for a single process (rank 0 of 1), so
library code calls them unconditionally.

The work is split by shard: rank ``r`` of ``w`` takes the shards ``k`` with
``k % w == r`` (:func:`my_shards`). Shards are pure functions of the config and ``k``
(``docs/store_format.md``), so the result does not depend on ``w``. SAE training splits
each step's batch instead (:func:`split_rows`) and sums weighted gradients
(:class:`GradientSum`); see ``crosslayer.sae.train``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from crosslayer.errors import CrosslayerError

if TYPE_CHECKING:
    from crosslayer.linalg import SufficientStats

T = TypeVar("T", np.ndarray, torch.Tensor)
R = TypeVar("R")


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def barrier() -> None:
    if active():
        dist.barrier()


def init(timeout_s: float = 1800.0) -> bool:
    """Start the process group described by torchrun's environment; ``False`` if none.

    CUDA: nccl, one GPU per process (``cuda:LOCAL_RANK`` becomes the current device, so
    ``--device auto`` / ``cuda`` picks it). Otherwise gloo.
    """
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise CrosslayerError(
            "launched by torchrun, but this torch build has no torch.distributed",
            "install a torch build with distributed support, or run without torchrun",
        )
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return True


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session() -> Iterator[None]:
    """A process group for the duration of a command, if torchrun started us."""
    started = init()
    try:
        yield
        # No rank destroys the group while another still uses it: a rank that tore down
        # first sometimes aborted in gloo's teardown ("terminate called without an active
        # exception", SIGABRT after its work was done: tests/test_distributed.py, ~1 in 10).
        if started:
            barrier()
    finally:
        if started:
            teardown()


def my_shards(n_shards: int) -> list[int]:
    """The shard indices this rank handles: ``k % world_size == rank``."""
    return list(range(rank(), n_shards, world_size()))


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` for one process."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def raise_if_any_failed(error: BaseException | None) -> None:
    """Collective: re-raise this rank's error, or fail because another rank did.

    Every rank must call it at the same point, so that one rank's one-line error (a NaN
    in its shard, a full disk) ends all ranks instead of leaving them waiting forever.
    """
    messages = all_gather_object(None if error is None else str(error))
    if error is not None:
        raise error
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failed:
        r, message = failed[0]
        raise CrosslayerError(f"rank {r} failed: {message}")


def on_rank_0(fn: Callable[..., R], *args: Any) -> R | None:
    """Collective: ``fn(*args)`` on rank 0 only, its result there and None on other ranks.

    Every rank then raises if it failed, so an error on rank 0 (a full disk) ends all ranks
    instead of leaving them waiting; it is also a barrier. A plain call for one process.
    """
    result: R | None = None
    error: BaseException | None = None
    if rank() == 0:
        try:
            result = fn(*args)
        except Exception as e:  # re-raised on rank 0, reported by the others
            error = e
    raise_if_any_failed(error)
    return result


def all_reduce_sum(x: T) -> T:
    """Sum a float64 numpy array or tensor over all ranks (returned; the input is kept).

    Sums are reduced in float64 so that the result matches a single process up to
    summation order (about 1e-15 relative).
    """
    if not active():
        return x
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.array(x, dtype=np.float64))
        dist.all_reduce(t)
        return t.numpy()
    on_device = torch.cuda.is_available() and dist.get_backend() == "nccl"
    t = x.detach().to(torch.float64).to("cuda" if on_device else "cpu").clone()
    dist.all_reduce(t)
    return t.to(x.device)


def all_reduce_stats(stats: SufficientStats) -> SufficientStats:
    """Sum a :class:`~crosslayer.linalg.SufficientStats` over all ranks, in place.

    n, Σx, Σy, Σy², X'X and X'Y are all additive, so the summed statistics are exactly
    those of the union of every rank's rows. A rank that saw no rows contributes zeros;
    if no rank saw any, the statistics stay empty.
    """
    if not active():
        return stats
    shapes = all_gather_object((stats.n, stats.sum_x.numel(), stats.sum_y.numel()))
    dims = {(d_in, d_out) for n, d_in, d_out in shapes if n > 0}
    if not dims:  # no rank saw a row (an empty held-out split): nothing to add up
        return stats
    if len(dims) != 1:
        raise CrosslayerError(
            f"ranks accumulated statistics of different widths or none at all: {sorted(dims)}",
            "give every rank batches of the same hooks, and at least as many shards as ranks",
        )
    ((d_in, d_out),) = dims
    if stats.n == 0:
        stats.allocate(d_in, d_out)
    stats.n = int(all_reduce_sum(np.array([stats.n], np.float64))[0])
    for name in ("sum_x", "sum_y", "sum_y2", "xtx", "xty"):
        setattr(stats, name, all_reduce_sum(getattr(stats, name)))
    return stats


def split_rows(x: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a global batch: ``torch.tensor_split`` into ``world_size`` contiguous
    blocks (sizes differ by at most one), block ``rank``; the whole batch for one process."""
    if not active():
        return x
    return torch.tensor_split(x, world_size())[rank()]


def row_share(n_rows: int) -> float:
    """The fraction of a global batch of ``n_rows`` that :func:`split_rows` gives this rank."""
    size = world_size()
    return (n_rows // size + (1 if rank() < n_rows % size else 0)) / n_rows


class GradientSum:
    """Gradient hooks that replace each parameter's ``.grad`` by ``Σ_ranks weight x grad``.

    With ``weight`` = this rank's share of the global batch (:func:`row_share`) and a loss
    that is a mean over rows, the result is the gradient of the mean over the whole global
    batch, i.e. what a single process computes, up to float summation order.

    Why hooks and not DistributedDataParallel: DDP synchronises gradients that flow through
    its wrapper's ``forward``, but sae-lens's ``SAETrainer`` calls the SAE's own
    ``training_forward_pass``, so DDP would see nothing. A post-accumulate-grad hook fires
    inside ``loss.backward()``, before the trainer clips the gradient norm and steps Adam,
    however the loss was computed. The hooks only count; once every parameter's gradient
    has been accumulated, the last one reduces them all in one flat ``all_reduce``, so the
    order in which autograd reaches the parameters (and the number of collectives) does not
    matter. A no-op for a single process. Use as a context manager (hooks removed on exit).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], weight: float) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.weight = weight
        self.pending = 0  # parameters whose gradient arrived since the last reduction
        self._handles: list[Any] = []

    def __enter__(self) -> GradientSum:
        if active():
            self._handles = [
                p.register_post_accumulate_grad_hook(self._arrived) for p in self.params
            ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _arrived(self, _: torch.Tensor) -> None:
        self.pending += 1
        if self.pending == len(self.params):
            self.pending = 0
            self._reduce()

    @torch.no_grad()
    def _reduce(self) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        # at least float32: bf16 parameters would otherwise be summed in bf16
        dtype = functools.reduce(torch.promote_types, (g.dtype for g in grads), torch.float32)
        flat = torch.cat([g.reshape(-1).to(dtype) for g in grads]) * self.weight
        dist.all_reduce(flat)
        for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            g.copy_(part.view_as(g))

    def check(self) -> None:
        """Raise if a backward pass left some parameters without a gradient (so nothing was
        reduced): the ranks' gradients would then differ."""
        if self.pending:
            raise CrosslayerError(
                f"only {self.pending} of {len(self.params)} parameters received a gradient",
                "every trainable parameter must take part in the loss under torchrun",
            )


def check_same_on_all_ranks(tensors: Iterable[torch.Tensor], what: str) -> None:
    """Collective: raise unless ``tensors`` are bitwise identical on every rank (replicas that
    drifted apart would otherwise go unnoticed: only rank 0's copy is saved)."""
    if not active():
        return
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digests = all_gather_object(digest.hexdigest())
    if len(set(digests)) > 1:
        bad = [r for r, d in enumerate(digests) if d != digests[0]]
        raise CrosslayerError(
            f"{what} differs between rank 0 and rank(s) {bad}",
            "this is a bug: train without torchrun and report it",
        )
