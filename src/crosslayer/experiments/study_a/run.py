"""The run directory and the one rule by which every stage caches and resumes.

A stage's output is a *checkpoint* in the run directory (:mod:`crosslayer.rundir` names
them). :meth:`Run.cached` is the rule: a finished checkpoint is loaded and the stage does
no work; otherwise the stage is announced, timed, computed and its checkpoint written
atomically, so a stage killed half-way leaves nothing behind and a rerun redoes only it.
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
            return checkpoint.load()
        if stage is None:
            return checkpoint.save(compute())
        with self.stage(*stage):
            value = compute()
        return checkpoint.save(value)


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
