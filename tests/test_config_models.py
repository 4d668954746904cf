"""``config.load_config``: the one YAML/TOML loader of every command's config model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from crosslayer.config import RunConfig, load_config
from crosslayer.errors import CrosslayerError
from crosslayer.sae import SAETrainConfig
from crosslayer.stage_configs import (
    ContrastConfig,
    EvalSAEConfig,
    InterpretConfig,
    LayersConfig,
)
from crosslayer.store import CollectConfig

# each model with a few values that differ from its defaults (required fields set)
CASES: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (RunConfig, {"tokens": 5000, "seed": 3, "sae_training": {"width": 512, "arch": "jumprelu"}}),
    (CollectConfig, {"hooks": ["hook_embed"], "tokens": 1000, "out": "runs/s", "dtype": "float16"}),
    (SAETrainConfig, {"arch": "topk", "width": 256, "target_l0": 8, "lr": 0.01}),
    (LayersConfig, {"prompts": ["a b c"], "layers": [0, 2], "max_tokens": 100}),
    (ContrastConfig, {"items": "x.jsonl", "layers": [1], "alpha": 0.01, "n_resamples": 99}),
    (InterpretConfig, {"facts": "f.json", "layers": [3], "top_k": 4, "relation": "P101"}),
    (EvalSAEConfig, {"sae": "runs/s/sae", "store": "runs/s", "n_contexts": 4, "device": "cpu"}),
]


def _toml(data: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    flat = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            flat += [f"[{k}]", *(f"{kk} = {value(vv)}" for kk, vv in v.items())]
    return "\n".join(flat) + "\n"


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(_toml(data) if path.suffix == ".toml" else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("model", "values"), CASES, ids=lambda c: getattr(c, "__name__", ""))
@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_each_model_loads_from_yaml_and_toml(
    tmp_path: Path, model: type[BaseModel], values: dict[str, Any], suffix: str
) -> None:
    cfg = load_config(model, _write(tmp_path / f"c{suffix}", values))
    assert type(cfg) is model
    assert cfg == model.model_validate(values)
    for key, want in values.items():  # the file's values, not the defaults
        got = getattr(cfg, key)
        if isinstance(want, dict):
            assert {k: getattr(got, k) for k in want} == want
        else:
            assert got == (Path(want) if isinstance(got, Path) else want)


@pytest.mark.parametrize(("model", "values"), CASES, ids=lambda c: getattr(c, "__name__", ""))
@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_an_unknown_key_is_an_error(
    tmp_path: Path, model: type[BaseModel], values: dict[str, Any], suffix: str
) -> None:
    path = _write(tmp_path / f"c{suffix}", {**values, "widht": 5})
    with pytest.raises(CrosslayerError, match="unknown config key 'widht'") as e:
        load_config(model, path)
    assert next(iter(model.model_fields)) in e.value.fix  # the valid keys are listed


def test_overrides_win_over_the_file_and_bad_values_name_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.yaml", {"width": 256, "lr": 0.01})
    cfg = load_config(SAETrainConfig, path, {"width": 128, "seed": None})
    assert (cfg.width, cfg.lr, cfg.seed) == (128, 0.01, 0)
    assert load_config(SAETrainConfig) == SAETrainConfig()
    with pytest.raises(CrosslayerError, match="config key 'lr_decay_frac'") as e:
        load_config(SAETrainConfig, None, {"lr_decay_frac": 2})
    assert "SAETrainConfig" in e.value.fix
    with pytest.raises(CrosslayerError, match="config key 'alpha'"):
        load_config(ContrastConfig, _write(tmp_path / "c.toml", {"alpha": 1.5}))
