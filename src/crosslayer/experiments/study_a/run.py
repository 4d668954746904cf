"""The run directory and the one rule by which every stage caches and resumes.

A stage's output is a *checkpoint* in the run directory (:mod:`crosslayer.rundir` names
them). :meth:`Run.cached` is the rule: a finished checkpoint is loaded and the stage does
no work; otherwise the stage is announced, timed, computed and its checkpoint written
atomically, so a stage killed half-way leaves nothing behind and a rerun redoes only it.
After a checkpoint is written the sha256 of its files goes to ``stages/sha256/`` (written
atomically, after the checkpoint); a finished checkpoint is loaded only if its files still
have those sums, else (a corrupted or hand-edited file) one warning names the file and the
stage is recomputed. A checkpoint with no sums yet (a run from before them) is trusted and
its sums are recorded. Stores are not rehashed: their manifests carry their own shard sums.
``checksums.json`` (sha256 of every file) is dropped when a run starts and written when it
ends (:func:`crosslayer.verify.record_checksums`), so it always describes a finished run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from crosslayer import console, fs
from crosslayer.config import RunConfig
from crosslayer.errors import ConfigMismatchError, CrosslayerError
from crosslayer.provenance import versions
from crosslayer.rundir import RunDir

T = TypeVar("T")


class Checkpoint(Protocol[T]):
    """Where a stage keeps its output: whether it is there, how to read and write it."""

    def done(self) -> bool: ...

    def files(self) -> list[Path]:
        """The files the checkpoint consists of, the one that names its sums first."""
        ...

    def load(self) -> T: ...

    def save(self, value: T) -> T:
        """Write ``value``; return it as a later :meth:`load` will give it back."""
        ...


@dataclass(frozen=True)
class JsonFile:
    """A stage whose output is one JSON object (NaN written as null)."""

    path: Path

    def done(self) -> bool:
        return self.path.is_file()

    def files(self) -> list[Path]:
        return [self.path]

    def load(self) -> dict[str, Any]:
        return dict(json.loads(self.path.read_text()))

    def save(self, value: dict[str, Any]) -> dict[str, Any]:
        value = fs.jsonable(value)
        fs.atomic_write_json(self.path, value)
        return dict(value)


@dataclass(frozen=True)
class Written(Generic[T]):
    """A stage that writes its own directory atomically (an SAE): done once ``marker`` exists."""

    marker: Path
    reload: Callable[[], T]

    def done(self) -> bool:
        return self.marker.is_file()

    def files(self) -> list[Path]:
        """The marker, then every other file of its directory."""
        rest = (p for p in sorted(self.marker.parent.rglob("*")) if p.is_file())
        return [self.marker, *(p for p in rest if p != self.marker)]

    def load(self) -> T:
        return self.reload()

    def save(self, value: T) -> T:
        return value  # already on disk


@dataclass
class Run:
    """The run directory and the bookkeeping shared by the stages."""

    cfg: RunConfig
    out: Path
    progress: bool = True
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def dirs(self) -> RunDir:
        return RunDir(self.out)

    @property
    def stages(self) -> Path:
        return self.dirs.stages

    def say(self, message: str) -> None:
        if self.progress:
            console.say("study A", message)

    @contextmanager
    def stage(self, name: str, message: str) -> Iterator[None]:
        """Announce a stage and record its wall time under ``timings[name]``."""
        self.say(message)
        start = time.perf_counter()
        yield
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 2)

    def cached(
        self,
        checkpoint: Checkpoint[T],
        compute: Callable[[], T],
        stage: tuple[str, str] | None = None,
    ) -> T:
        """The rule of every stage: load a finished checkpoint, else compute and write it.

        ``stage``: ``(name, message)`` to announce and time the computation under; None when
        ``compute`` times its own parts (the three transcoders share one checkpoint).
        """
        if checkpoint.done():
            changed = self._changed(checkpoint)
            if changed is None:
                return checkpoint.load()
            console.warn(
                f"{changed} differs from the sha256 recorded when its stage wrote it "
                "(corrupted or edited): recomputing the stage"
            )
            self._discard(checkpoint)
        if stage is None:
            value = checkpoint.save(compute())
        else:
            with self.stage(*stage):
                value = compute()
            value = checkpoint.save(value)
        self._record(checkpoint)
        return value

    def _sums(self, checkpoint: Checkpoint[Any]) -> Path:
        return self.dirs.stage_sums(checkpoint.files()[0])

    def _record(self, checkpoint: Checkpoint[Any]) -> None:
        files = {p.relative_to(self.out).as_posix(): fs.sha256_file(p) for p in checkpoint.files()}
        fs.atomic_write_json(self._sums(checkpoint), {"files": files})

    def _changed(self, checkpoint: Checkpoint[Any]) -> Path | None:
        """The first file of a finished checkpoint that differs from its recorded sum (or is
        gone); None when all match. No sums yet: trusted, and its sums are recorded now."""
        sums = self._sums(checkpoint)
        if not sums.is_file():
            self._record(checkpoint)
            return None
        try:
            recorded = dict(json.loads(sums.read_text())["files"])
        except (ValueError, KeyError, TypeError):
            return sums
        for rel, digest in recorded.items():
            path = self.out / rel
            if not path.is_file() or fs.sha256_file(path) != digest:
                return path
        return None

    def _discard(self, checkpoint: Checkpoint[Any]) -> None:
        """Remove a checkpoint's files (and the directories they empty, e.g. an SAE's)."""
        for path in checkpoint.files():
            path.unlink(missing_ok=True)
            parent = path.parent
            while parent not in (self.out, self.stages) and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        self._sums(checkpoint).unlink(missing_ok=True)


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
    dirs = RunDir(out)
    mine = cfg.model_dump(mode="json", exclude={"out"})
    if dirs.config.is_file():
        old = json.loads(dirs.config.read_text())
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
            dirs.config, {"config": mine, "config_hash": cfg.hash(), "versions": versions()}
        )
    # a run killed while writing a stage leaves a hidden temporary beside its output
    fs.remove_temporaries(out, recursive=True)
    dirs.stages.mkdir(parents=True, exist_ok=True)
    return Run(cfg, out, progress)


def nan_array(values: Any) -> np.ndarray:
    """A JSON list (None for NaN) back to a float array."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def sample_rows(n: int, k: int | None, seed: int) -> np.ndarray:
    """All row indices, or a sorted seeded sample of ``k`` of them."""
    if k is None or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))
