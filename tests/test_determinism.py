"""The same config and seed give a byte-identical results.json, apart from timing fields.

Study A is run twice on the tiny Gemma 3, fresh each time (no resume), into two different
directories; every stage is on (Adam and MLP transcoders, the sweep, the study's probe
protocol). results.json is compared as text with only ``created`` and ``timings`` cut out,
so any float that differs in its last bit, any reordered key and any absolute path fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from crosslayer.config import build_config
from crosslayer.experiments.study_a import run_study_a
from crosslayer.model import tiny_model

TINY: dict[str, Any] = {
    "corpus": "builtin:news",
    "tokens": 2500,
    "seed": 3,
    "data": {"max_doc_chars": 1000, "heldout_frac": 0.25, "min_split_tokens": 200},
    "sweep": {"tokens": 1500},
    "transcoder": {"study_recipe": True, "adam_epochs": 2, "mlp_hidden": 16, "mlp_max_epochs": 2},
    "sae_training": {"arch": "topk", "width": 32, "target_l0": 4, "epochs": 1, "batch_size": 256},
    "crossfit": {"n_folds": 3, "min_pos_fit": 10, "min_pos_score": 5},
    "probes": {"study_features": 3, "study_tokens": 1500},
    "analysis": {"n_bootstrap": 200, "n_extreme": 2, "top_k": 2},
}

# Top-level keys of results.json that hold wall-clock values, as written (indent 2).
TIMING = (
    re.compile(r'^  "created": "[^"\n]*",\n', re.M),
    re.compile(r'^  "timings": \{\n(?:    [^\n]*\n)*  \},?\n', re.M),
)


def without_timing(text: str) -> str:
    """results.json's text with the timing keys cut out, and nothing else touched."""
    for pattern in TIMING:
        text, n = pattern.subn("", text)
        assert n == 1, f"timing key {pattern.pattern!r} not found exactly once"
    return text


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    outs = []
    for name in ("first", "second"):
        out = tmp_path_factory.mktemp(name) / "run"
        cfg = build_config("quick", overrides={**TINY, "out": str(out)})
        # a fresh model object each time: nothing carries over in memory between the runs
        run_study_a(cfg, model=tiny_model("gemma3", n_layers=4, d_model=64), progress=False)
        outs.append(out)
    return outs[0], outs[1]


def test_results_json_is_byte_identical_apart_from_timings(two_runs: tuple[Path, Path]) -> None:
    a, b = (without_timing((out / "results.json").read_text()) for out in two_runs)
    assert str(two_runs[0]) not in a and str(two_runs[1]) not in b  # no absolute paths
    if a != b:  # name the first differing line, not a 1000-line diff
        la, lb = a.splitlines(), b.splitlines()
        i = next((i for i, (x, y) in enumerate(zip(la, lb, strict=False)) if x != y), len(la))
        pytest.fail(f"results.json differs at line {i + 1}: {la[i : i + 1]} vs {lb[i : i + 1]}")
    # What was cut is only the timings: the rest is still the whole, valid document.
    rest = json.loads(a)
    assert "created" not in rest and "timings" not in rest
    assert {"transcoder", "saes", "features", "comparison", "depth_sweep", "plots"} <= set(rest)
    assert rest["transcoder"]["study_recipe"] and rest["transcoder"]["mlp"]
    assert rest["features"]["baseline"]["study_protocol"] is not None


def test_the_run_files_behind_the_results_are_identical(two_runs: tuple[Path, Path]) -> None:
    """SAE weights, stage files and store shards: the same sha256 in both runs."""
    sums = [json.loads((out / "checksums.json").read_text())["files"] for out in two_runs]
    assert sums[0].keys() == sums[1].keys()
    same = [f for f in sums[0] if f.startswith(("saes/", "stages/", "transcoder/"))]
    assert "saes/residual/sae_weights.safetensors" in same and "transcoder/cfg.json" in same
    assert {f: sums[0][f] for f in same} == {f: sums[1][f] for f in same}
    for store in ("store", "sweep_store"):
        shards = [
            json.loads((out / store / "manifest.json").read_text())["shards"] for out in two_runs
        ]
        assert shards[0] == shards[1]
