"""Crash safety of the main job: ``crosslayer run`` killed with SIGKILL, then rerun.

Each trial forks the real CLI on the tiny study (every stage on: both stores, one pass, the
Adam and MLP transcoders, both SAEs, the probes and the study's protocol, the depth sweep, the
report), kills it with SIGKILL at a seeded moment inside one chosen stage, reruns the same
command, and requires that the rerun finishes, that ``crosslayer verify`` passes, and that
results.json equals an uninterrupted run's as text, ``created`` and ``timings`` aside.

The kill moments come from the uninterrupted run's own stage timings: one trial per stage,
at a point within it drawn from a generator seeded by the trial number, so a failure can be
replayed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest

from crosslayer.cli import main
from tests.test_determinism import TINY, without_timing

# Every stage of the tiny study, in the order it runs (the keys of results.json's timings),
# then the report, which is written after results.json.
STAGES = (
    "load", "collect", "transcoder", "transcoder_adam", "transcoder_mlp", "placebo",
    "sae_baseline", "sae_residual", "sae_placebo", "score_baseline", "score_residual",
    "score_placebo", "removals", "probes_baseline", "probes_residual", "decomposition",
    "depth_sweep", "emergence", "report",
)  # fmt: skip


def _args(config: Path, model: Path, out: Path) -> list[str]:
    return ["run", "--config", str(config), "--model", str(model), "--out", str(out),
            "--no-progress"]  # fmt: skip


def _run_in_child(argv: list[str]) -> None:
    raise SystemExit(main(argv))


def _fork(argv: list[str]) -> multiprocessing.process.BaseProcess:
    child = multiprocessing.get_context("fork").Process(target=_run_in_child, args=(argv,))
    child.start()
    return child


@pytest.fixture(scope="module")
def reference(tiny_dir, tmp_path_factory) -> tuple[Path, Path, dict[str, tuple[float, float]]]:
    """The config, an uninterrupted run, and each stage's (start, end) in seconds from the
    fork of a child running the command (timed in a child like the trials', after the
    in-process run has paid every first-time cost)."""
    root = tmp_path_factory.mktemp("run-crash")
    config = root / "tiny.yaml"
    config.write_text(json.dumps({**TINY, "profile": "quick"}))  # JSON is YAML
    assert main(_args(config, tiny_dir, root / "reference")) == 0
    timed = root / "timed"
    start = time.time()
    child = _fork(_args(config, tiny_dir, timed))
    child.join()
    assert child.exitcode == 0
    results = json.loads((timed / "results.json").read_text())
    stages = [(k, v) for k, v in results["timings"].items() if k != "total"]
    # results.json is written when the stages are done, report.html after it
    done = (timed / "results.json").stat().st_mtime - start
    begin = done - results["timings"]["total"]  # config, model load before the first stage
    spans, t = {}, begin
    for name, seconds in stages:
        spans[name] = (t, t + seconds)
        t += seconds
    spans["report"] = (done, (timed / "report.html").stat().st_mtime - start)
    return config, root / "reference", spans


def test_the_trials_cover_every_stage(reference) -> None:
    assert tuple(reference[2]) == STAGES  # a new stage needs its trial


@pytest.mark.parametrize("trial", range(len(STAGES)))
def test_sigkill_during_a_stage_then_rerun(tiny_dir, reference, tmp_path, trial, capsys) -> None:
    config, ref, spans = reference
    name = STAGES[trial]
    when = random.Random(trial).uniform(*spans[name])
    for attempt in range(3):  # a busy or quiet CPU shifts the stages: kill earlier if missed
        out = tmp_path / f"killed-{attempt}"
        argv = _args(config, tiny_dir, out)
        child = _fork(argv)
        time.sleep(when)
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        if child.exitcode == -signal.SIGKILL:
            break
        when *= 0.8
    assert child.exitcode == -signal.SIGKILL, f"the run always ended before the kill in {name}"
    if (out / "stages").is_dir():  # as if killed inside an atomic write, whatever the timing
        (out / "stages" / ".depth.json.tmp-planted").write_text('{"half')

    assert main(argv) == 0, f"rerun after a kill in stage {name} at {when:.2f} s failed"
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0, capsys.readouterr().err
    got = without_timing((out / "results.json").read_text())
    assert got == without_timing((ref / "results.json").read_text()), name
    assert not list(out.rglob(".*tmp*")), "a temporary file of the killed run was left behind"
