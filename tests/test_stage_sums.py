"""Run.cached's per-stage sha256: an intact checkpoint is loaded, a corrupted one recomputed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crosslayer.config import build_config
from crosslayer.experiments.study_a.run import JsonFile, Run, Written, open_run


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return open_run(build_config("quick", overrides={"out": str(tmp_path / "run")}), False)


def _counting(value: dict[str, Any]) -> tuple[list[int], Any]:
    calls: list[int] = []

    def compute() -> dict[str, Any]:
        calls.append(1)
        return value

    return calls, compute


def test_intact_checkpoint_loads_and_a_corrupted_one_is_recomputed(
    run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    path = run.stages / "depth.json"
    calls, compute = _counting({"r2": [0.5, 0.25]})
    assert run.cached(JsonFile(path), compute) == {"r2": [0.5, 0.25]}
    sums = json.loads((run.stages / "sha256" / "depth.json").read_text())
    assert list(sums["files"]) == ["stages/depth.json"]
    assert run.cached(JsonFile(path), compute) == {"r2": [0.5, 0.25]}
    assert len(calls) == 1 and "warning" not in capsys.readouterr().err  # intact: loaded
    path.write_text(json.dumps({"r2": [0.9, 0.25]}))  # hand-edited
    assert run.cached(JsonFile(path), compute) == {"r2": [0.5, 0.25]}
    err = capsys.readouterr().err
    assert len(calls) == 2 and json.loads(path.read_text()) == {"r2": [0.5, 0.25]}
    assert err.count("warning:") == 1 and len(err.strip().splitlines()) == 1
    assert str(path) in err and "recomputing" in err
    assert run.cached(JsonFile(path), compute) == {"r2": [0.5, 0.25]}  # sums rewritten
    assert len(calls) == 2


def test_a_checkpoint_without_sums_is_trusted_and_gets_them(run: Run) -> None:
    path = run.stages / "removals.json"
    path.write_text(json.dumps({"old": 1}))  # a run from before per-stage sums
    calls, compute = _counting({"new": 2})
    assert run.cached(JsonFile(path), compute) == {"old": 1} and not calls
    assert (run.stages / "sha256" / "removals.json").is_file()


def test_a_corrupted_file_of_a_directory_checkpoint_retrains_it(
    run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    sae = run.out / "saes" / "baseline"
    calls: list[int] = []

    def train() -> str:  # like train_sae: refuses an existing directory
        assert not sae.exists()
        calls.append(1)
        sae.mkdir(parents=True)
        (sae / "sae_weights.safetensors").write_bytes(b"\x00" * 64)
        (sae / "cfg.json").write_text("{}")
        return "trained"

    done = Written(sae / "cfg.json", lambda: "loaded")
    assert run.cached(done, train) == "trained"
    assert (run.stages / "sha256" / "saes__baseline__cfg.json").is_file()
    assert run.cached(done, train) == "loaded" and len(calls) == 1
    (sae / "sae_weights.safetensors").write_bytes(b"\x01" * 64)
    assert run.cached(done, train) == "trained" and len(calls) == 2
    assert str(sae / "sae_weights.safetensors") in capsys.readouterr().err
