"""``crosslayer verify`` on a study A run directory: every artefact ok, missing or damaged.

One small run of the tiny Gemma 3 is made per module; each test damages its own copy and
checks that the library report and the CLI (exit code, one error line) name the artefact and
the file, and that an intact run passes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from crosslayer.cli import main
from crosslayer.config import build_config
from crosslayer.errors import CrosslayerError
from crosslayer.experiments.study_a import run_study_a
from crosslayer.model import tiny_model
from crosslayer.verify import read_safetensors_header, verify_path

SMALL: dict[str, Any] = {
    "corpus": "builtin:news",
    "tokens": 2500,
    "data": {"max_doc_chars": 1000, "heldout_frac": 0.25, "min_split_tokens": 200},
    "sweep": {"tokens": 1500},
    "transcoder": {"study_recipe": False, "mlp": False},
    "sae_training": {"arch": "topk", "width": 32, "target_l0": 4, "epochs": 1, "batch_size": 256},
    "crossfit": {"n_folds": 3, "min_pos_fit": 10, "min_pos_score": 5},
    "probes": {"study_protocol": False},
    "analysis": {"n_bootstrap": 100, "n_extreme": 1, "top_k": 2},
}


@pytest.fixture(scope="module")
def lm() -> Any:
    return tiny_model("gemma3", n_layers=4, d_model=64)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, lm: Any) -> Path:
    out = tmp_path_factory.mktemp("verify") / "run"
    cfg = build_config("quick", overrides={**SMALL, "out": str(out)})
    run_study_a(cfg, model=lm, progress=False)
    return out


@pytest.fixture
def run(made: Path, tmp_path: Path) -> Path:
    """A copy of the run this test may damage."""
    return Path(shutil.copytree(made, tmp_path / "run"))


def statuses(path: Path) -> dict[str, str]:
    return {a.name: a.status for a in verify_path(path).artefacts}


def cli(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["verify", str(path)])
    out, err = capsys.readouterr()
    return code, out, err.strip()


def test_an_intact_run_verifies_with_every_artefact_ok(
    made: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = verify_path(made)
    assert report.kind == "run" and report.ok and report.checksums
    expected = {
        "config.json", "results.json", "store", "sweep_store", "saes/baseline", "saes/residual",
        "saes/placebo", "study_a.png", "feature_predictability.png", "depth_curve.png",
        "variance_split.png",
        "report.html", "checksums.json", "stages", "transcoder", "emergence_heatmap.png",
        "emergence_layers.png", "emergence_vs.png",
    }  # fmt: skip
    if (made / "features").is_dir():  # runs with per-feature Parquet tables (issue 13)
        expected.add("features")
    assert set(statuses(made)) == expected
    assert set(statuses(made).values()) == {"ok"}
    # checksums.json lists every file of the run but the stores (they have their manifests)
    files = json.loads((made / "checksums.json").read_text())["files"]
    assert {"results.json", "report.html", "saes/baseline/sae_weights.safetensors"} <= set(files)
    assert "transcoder/model.safetensors" in files and "transcoder/cfg.json" in files
    assert "stages/transcoder.json" in files and not any(f.startswith("store") for f in files)

    code, out, err = cli(made, capsys)
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert len(lines) == len(expected) + 1 and all(line.startswith("ok") for line in lines)
    assert lines[-1] == f"ok: run {made}: {len(expected)} artefacts, checksums match"


def test_one_flipped_byte_in_a_shard_names_the_store_and_the_file(
    made: Path, run: Path, lm: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    shard = run / "store" / "shard_00000" / "blocks.2.hook_resid_post.npy"
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    st = statuses(run)
    assert st["store"] == "damaged"
    assert {k for k, v in st.items() if v != "ok"} == {"store"}
    code, out, err = cli(run, capsys)
    assert code == 2 and err.count("\n") == 0 and err.startswith("error: ")
    assert f"1 bad artefact(s) of {len(verify_path(made).artefacts)}" in err
    assert "store damaged (shard_00000/blocks.2.hook_resid_post.npy damaged" in err
    assert "damaged  store: shard_00000/blocks.2.hook_resid_post.npy damaged" in out

    # The fix the message gives works: delete the shard directory, run the same command.
    before = json.loads((run / "checksums.json").read_text())["files"]
    shutil.rmtree(shard.parent)
    run_study_a(
        build_config("quick", overrides={**SMALL, "out": str(run)}), model=lm, progress=False
    )
    assert shard.read_bytes() == (made / "store" / "shard_00000" / shard.name).read_bytes()
    assert verify_path(run).ok  # the rerun rewrote results.json and then checksums.json
    after = json.loads((run / "checksums.json").read_text())["files"]
    assert after.keys() == before.keys() and after["results.json"] != before["results.json"]
    weights = "saes/baseline/sae_weights.safetensors"  # stages and SAEs were reused
    assert after[weights] == before[weights]
    assert cli(run, capsys)[0] == 0


def test_a_deleted_sae_file_is_missing_and_named(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (run / "saes" / "residual" / "sae_weights.safetensors").unlink()
    (run / "saes" / "baseline" / "sparsity.safetensors").unlink()  # only checksums.json knows it
    report = verify_path(run)
    bad = {a.name: [str(p) for p in a.problems] for a in report.bad}
    assert bad == {
        "saes/residual": ["sae_weights.safetensors missing"],
        "saes/baseline": ["sparsity.safetensors missing"],
    }
    code, out, err = cli(run, capsys)
    assert code == 2 and "missing  saes/residual: sae_weights.safetensors missing" in out
    assert "saes/residual missing (sae_weights.safetensors missing)" in err


def test_a_whole_sae_directory_deleted_is_missing(run: Path) -> None:
    shutil.rmtree(run / "saes" / "baseline")
    report = verify_path(run)
    [bad] = report.bad
    assert (bad.name, bad.status, [str(p) for p in bad.problems]) == (
        "saes/baseline",
        "missing",
        ["no SAE directory"],
    )
    # results.json names it too: the file is reported once, under the SAE's own artefact
    assert "saes/baseline" not in {p.file for a in report.artefacts for p in a.problems}


@pytest.mark.parametrize("with_checksums", [True, False])
def test_truncated_safetensors_is_damaged(run: Path, with_checksums: bool) -> None:
    weights = run / "saes" / "baseline" / "sae_weights.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size - 100])
    if not with_checksums:  # a run written before checksums.json: the header check alone
        (run / "checksums.json").unlink()
    report = verify_path(run)
    assert report.checksums is with_checksums
    [bad] = report.bad
    assert (bad.name, bad.status) == ("saes/baseline", "damaged")
    assert bad.problems[0].file == "sae_weights.safetensors"
    assert "truncated" in bad.problems[0].why
    assert f"file holds {size - 100 - 8 - _header_len(weights)}" in bad.problems[0].why


def _header_len(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


def test_cfg_json_that_disagrees_with_the_weights_is_damaged(run: Path) -> None:
    (run / "checksums.json").unlink()  # the shape check, not the checksum, must catch it
    cfg_path = run / "saes" / "residual" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["d_sae"] = 48
    cfg_path.write_text(json.dumps(cfg))
    [bad] = verify_path(run).bad
    assert bad.name == "saes/residual" and bad.status == "damaged"
    whys = [p.why for p in bad.problems]
    assert "W_enc has shape [64, 32], cfg.json says [64, 48]" in whys
    assert "b_enc has shape [32], cfg.json says [48]" in whys


def test_a_transcoder_artefact_that_disagrees_or_is_gone_is_named(run: Path) -> None:
    (run / "checksums.json").unlink()  # the structural check alone must catch both
    cfg_path = run / "transcoder" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps(cfg | {"d_out": 7}))
    [bad] = verify_path(run).bad
    assert (bad.name, bad.status) == ("transcoder", "damaged")
    d = cfg["d_in"]
    assert [p.why for p in bad.problems] == [
        f"W has shape [{cfg['d_out']}, {d}], cfg.json says [7, {d}]",
        f"b has shape [{cfg['d_out']}], cfg.json says [7]",
    ]
    shutil.rmtree(run / "transcoder")
    [bad] = verify_path(run).bad
    assert (bad.name, bad.status, str(bad.problems[0])) == (
        "transcoder",
        "missing",
        "no transcoder directory",
    )


def test_results_json_damaged_or_naming_a_missing_file(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (run / "depth_curve.png").unlink()
    assert {k: v for k, v in statuses(run).items() if v != "ok"} == {"depth_curve.png": "missing"}
    code, _, err = cli(run, capsys)
    assert code == 2 and "depth_curve.png missing (named by results.json)" in err
    text = (run / "results.json").read_text()
    (run / "results.json").write_text(text[: len(text) // 2])
    st = statuses(run)
    assert st["results.json"] == "damaged"
    code, _, err = cli(run, capsys)
    assert code == 2 and "results.json damaged (not JSON:" in err


def test_a_store_shard_deleted_in_a_run_and_a_store_on_its_own(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.rmtree(run / "sweep_store" / "shard_00000")
    report = verify_path(run)
    [bad] = report.bad
    assert bad.name == "sweep_store" and bad.status == "missing"
    assert "shard_00000/split.npy missing" in [str(p) for p in bad.problems]
    # a store path still gets the store's own one-line report
    code, out, err = cli(run / "store", capsys)
    assert code == 0 and out.startswith(f"ok: {run / 'store'}: ")
    code, _, err = cli(run / "sweep_store", capsys)
    # 5 metadata files + 4 hooks (source and every resid_post up to the target)
    assert code == 2 and "has 9 bad file(s): shard_00000/" in err and "and 4 more" in err


def test_not_a_store_or_run_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(CrosslayerError, match="no activation store or study A run"):
        verify_path(tmp_path)
    with pytest.raises(CrosslayerError, match="does not exist"):
        verify_path(tmp_path / "nowhere")


def test_safetensors_header_reader_agrees_with_safetensors(made: Path) -> None:
    path = made / "saes" / "baseline" / "sae_weights.safetensors"
    header = read_safetensors_header(path)
    with safe_open(str(path), framework="numpy") as f:
        keys = list(f.keys())
        assert sorted(header) == sorted(keys)
        for key in keys:
            assert header[key]["shape"] == list(f.get_tensor(key).shape)
