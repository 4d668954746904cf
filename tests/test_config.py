"""RunConfig: profiles, YAML/TOML files, CLI flags, precedence, errors, `crosslayer init`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from crosslayer.cli import main
from crosslayer.config import (
    PROFILES,
    RunConfig,
    build_config,
    example_config,
    parse_set,
    profile_config,
)
from crosslayer.errors import CrosslayerError
from crosslayer.experiments.study_a import default_out, default_target


def test_default_profile_is_the_embedded_default_run() -> None:
    cfg = profile_config("default")
    assert cfg == RunConfig()  # the field defaults ARE the default profile
    assert (cfg.model, cfg.source, cfg.corpus, cfg.sae) == (
        "gemma-3-270m",
        "hook_embed",
        "builtin:wiki",
        None,
    )
    assert cfg.target is None and default_target(18) == "blocks.12.hook_resid_post"


def test_quick_profile_is_smaller_in_every_costly_dimension() -> None:
    quick, default = profile_config("quick"), profile_config("default")
    assert quick.profile == "quick"
    assert quick.tokens < default.tokens
    assert quick.sweep.tokens < default.sweep.tokens
    assert quick.sae_training.width < default.sae_training.width
    # ... but runs the same study: same model, hooks and corpus
    assert (quick.model, quick.source, quick.target, quick.corpus) == (
        default.model,
        default.source,
        default.target,
        default.corpus,
    )


def test_precedence_profile_then_file_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("profile: quick\ntokens: 5000\nsae_training:\n  width: 256\n")
    cfg = build_config(file=f)
    assert cfg.profile == "quick"
    assert cfg.tokens == 5000 and cfg.sae_training.width == 256
    assert cfg.sae_training.target_l0 == PROFILES["quick"]["sae_training"]["target_l0"]
    cfg = build_config(file=f, overrides={"tokens": 7000, "sae_training": {"arch": "jumprelu"}})
    assert cfg.tokens == 7000 and cfg.sae_training.width == 256
    assert cfg.sae_training.arch == "jumprelu"
    assert build_config("default", f).profile == "default"  # --profile beats the file's key
    assert build_config("default", f).sweep.tokens == profile_config("default").sweep.tokens


def test_yaml_and_toml_give_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("tokens: 9000\nprobes:\n  max_features: 300\n")
    (tmp_path / "c.toml").write_text("tokens = 9000\n[probes]\nmax_features = 300\n")
    a, b = build_config(file=tmp_path / "c.yaml"), build_config(file=tmp_path / "c.toml")
    assert a == b and a.probes.max_features == 300


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("tokns: 5\n", r"unknown config key 'tokns'.*valid keys: profile, model"),
        ("probes:\n  max_featurs: 5\n", r"'probes.max_featurs' in section 'probes'"),
        ("tokens: many\n", r"config key 'tokens'.*'many'"),
        ("tokens: 10\n", r"config key 'tokens'.*greater than or equal to 100"),
        ("sae_training:\n  arch: relu\n", r"config key 'sae_training.arch'"),
        ("profile: huge\n", r"unknown profile 'huge'"),
        ("- a\n- b\n", r"holds a list, not a mapping"),
        ("tokens: [\n", r"cannot parse"),
    ],
)
def test_bad_config_files_are_one_line_errors(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(CrosslayerError, match=match) as e:
        build_config(file=f)
    assert "\n" not in str(e.value)


def test_missing_or_unknown_format_file(tmp_path: Path) -> None:
    with pytest.raises(CrosslayerError, match="not found"):
        build_config(file=tmp_path / "nope.yaml")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(CrosslayerError, match="neither YAML nor TOML"):
        build_config(file=tmp_path / "c.json")


def test_parse_set_builds_nested_typed_overrides() -> None:
    got = parse_set(
        ["probes.max_features=500", "sweep.enabled=false", "target=blocks.3.hook_mlp_out"]
    )
    assert got == {
        "probes": {"max_features": 500},
        "sweep": {"enabled": False},
        "target": "blocks.3.hook_mlp_out",
    }
    with pytest.raises(CrosslayerError, match="not KEY=VALUE"):
        parse_set(["probes.max_features"])


def test_hash_ignores_the_output_directory_only() -> None:
    a = RunConfig()
    assert a.hash() == RunConfig(out="elsewhere").hash()
    assert a.hash() != RunConfig(tokens=5000).hash()
    assert default_out(a) != default_out(RunConfig(tokens=5000))


@pytest.mark.parametrize("profile", ["default", "quick"])
@pytest.mark.parametrize("fmt", ["yaml", "toml"])
def test_example_config_documents_every_key_and_loads_back(
    tmp_path: Path, profile: str, fmt: str
) -> None:
    text = example_config(profile, fmt)  # type: ignore[arg-type]
    f = tmp_path / f"c.{fmt}"
    f.write_text(text)
    assert build_config(file=f) == profile_config(profile)
    for section in ("data", "sweep", "transcoder", "sae_training", "probes", "analysis"):
        model: Any = RunConfig.model_fields[section].annotation
        for key, field in model.model_fields.items():
            assert key in text and field.description in text


def test_init_writes_the_file_and_refuses_to_overwrite(tmp_path: Path) -> None:
    f = tmp_path / "my.toml"
    assert main(["init", str(f), "--profile", "quick"]) == 0
    assert build_config(file=f) == profile_config("quick")
    assert main(["init", str(f)]) == 2  # exists
    assert main(["init", str(f), "--force"]) == 0
    assert build_config(file=f) == profile_config("default")
    assert main(["init", str(tmp_path / "x.txt")]) == 2


def test_every_run_flag_sets_its_config_key(capsys: pytest.CaptureFixture[str]) -> None:
    flags = {
        "--model": ("m.gguf", "model"),
        "--source": ("blocks.0.hook_resid_post", "source"),
        "--target": ("blocks.5.hook_resid_post", "target"),
        "--sae": ("sae_dir", "sae"),
        "--corpus": ("builtin:news", "corpus"),
        "--tokens": ("12345", "tokens"),
        "--out": ("runs/x", "out"),
        "--device": ("cpu", "device"),
        "--seed": ("7", "seed"),
        "--width": ("512", "sae_training.width"),
        "--target-l0": ("16", "sae_training.target_l0"),
        "--arch": ("jumprelu", "sae_training.arch"),
    }
    argv = ["run", "--dry-run", "--profile", "quick", "--set", "probes.max_features=9"]
    for flag, (value, _) in flags.items():
        argv += [flag, value]
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["profile"] == "quick" and printed["probes"]["max_features"] == 9
    for value, key in flags.values():
        node = printed
        for part in key.split("."):
            node = node[part]
        assert str(node) in (value, f"{value}.0"), key


def test_run_with_a_bad_key_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--set", "probes.max_featurs=5"]) == 2
    err = capsys.readouterr().err
    assert "max_featurs" in err and "valid keys" in err
