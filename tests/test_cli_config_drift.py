"""CLI flags and the config models they fill must agree: same defaults, same help.

A flag written out by hand can drift from its config field (``train-sae --epochs`` once
defaulted to 4 while ``SAETrainConfig.epochs`` was 3). Flags now come from the fields
(``crosslayer.cli._options.option_for``); these tests keep it so: for every sub-command
built on a config model, each flag that names a field of the model must default to the
field's default and show the field's description as its help, and every field of every
config model must have a description. The library functions behind ``layers``, ``contrast``,
``interpret`` and ``eval-sae`` take the same settings as keywords; their defaults are checked
too.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import typer
from pydantic import BaseModel

from crosslayer.cli._options import config_field
from crosslayer.cli.collect import collect_command
from crosslayer.cli.contrast import contrast_command
from crosslayer.cli.eval_sae import eval_sae_command
from crosslayer.cli.interpret import interpret_command
from crosslayer.cli.layers import layers_command
from crosslayer.cli.run import run_command
from crosslayer.cli.train_sae import train_sae_command
from crosslayer.config import RunConfig
from crosslayer.experiments.contrast import run_contrast
from crosslayer.experiments.interpret import run_interpret
from crosslayer.experiments.layers import run_layers
from crosslayer.sae import SAETrainConfig, evaluate_sae
from crosslayer.stage_configs import (
    ContrastConfig,
    EvalSAEConfig,
    InterpretConfig,
    LayersConfig,
)
from crosslayer.store import CollectConfig

_SAE = {f: f"sae_training.{f}" for f in ("width", "target_l0", "arch")}

# (command, its config model, flags whose field has another name: flag -> field, and the
# least number of flags that must map to a field)
COMMANDS: list[tuple[Callable[..., Any], type[BaseModel], dict[str, str], int]] = [
    (run_command, RunConfig, _SAE, 13),
    (collect_command, CollectConfig, {}, 13),
    (train_sae_command, SAETrainConfig, {"tokens": "n_tokens"}, 9),
    (layers_command, LayersConfig, {"prompt": "prompts"}, 5),
    (contrast_command, ContrastConfig, {}, 5),
    (interpret_command, InterpretConfig, {"groups": "n_groups"}, 8),
    (eval_sae_command, EvalSAEConfig, {}, 7),
]
MODELS: list[type[BaseModel]] = [m for _, m, _, _ in COMMANDS]


def _options(command: Callable[..., Any]) -> dict[str, Any]:
    """``{parameter name: typer OptionInfo (or a plain default)}`` of a typer command."""
    return {n: p.default for n, p in inspect.signature(command).parameters.items()}


def drift(command: Callable[..., Any], model: type[BaseModel], renamed: dict[str, str]
          ) -> tuple[list[str], int]:  # fmt: skip
    """Every disagreement between ``command``'s flags and ``model``'s fields, and how many
    flags were compared."""
    problems, compared = [], 0
    for flag, info in _options(command).items():
        try:
            field = config_field(model, renamed.get(flag, flag))
        except KeyError:
            continue  # a CLI-only flag (--overwrite, --progress, --config)
        compared += 1
        where = f"--{flag.replace('_', '-')} vs {model.__name__}.{renamed.get(flag, flag)}"
        if not field.description:
            problems.append(f"{where}: the field has no description")
        if getattr(info, "help", None) != field.description:
            problems.append(f"{where}: help {getattr(info, 'help', None)!r} is not the field's "
                            f"description {field.description!r}")  # fmt: skip
        default = getattr(info, "default", info)
        if field.is_required() or default is ...:
            continue  # required on both sides, or a CLI default where the model has none
        want = field.get_default(call_default_factory=True)
        if default is None or want is None or default in ("", []):
            continue  # "not given": the config's own default (or profile) applies
        if default != want:
            problems.append(f"{where}: default {default!r} is not the field's {want!r}")
    return problems, compared


@pytest.mark.parametrize(
    ("command", "model", "renamed", "least"), COMMANDS, ids=lambda c: getattr(c, "__name__", "")
)
def test_flags_agree_with_the_config_fields(
    command: Callable[..., Any], model: type[BaseModel], renamed: dict[str, str], least: int
) -> None:
    problems, compared = drift(command, model, renamed)
    assert not problems, "\n".join(problems)
    assert compared >= least  # the test must see the command's flags at all


def test_drift_is_caught() -> None:
    """The check itself fails on a flag whose default or help was written by hand."""

    def drifted(
        epochs: int = typer.Option(4, "--epochs", help="Passes over the store's training tokens"),
        lr: float = typer.Option(3e-3, "--lr", help="learning rate"),
    ) -> None: ...

    problems, compared = drift(drifted, SAETrainConfig, {})
    assert compared == 2
    assert any("--epochs" in p and "default 4" in p for p in problems)
    assert any("--lr" in p and "help" in p for p in problems)


def _all_models(model: type[BaseModel]) -> list[type[BaseModel]]:
    out = [model]
    for field in model.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out.extend(_all_models(field.annotation))
    return out


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_field_has_a_description_and_forbids_extra_keys(model: type[BaseModel]) -> None:
    for m in _all_models(model):
        assert m.model_config.get("extra") == "forbid", m.__name__
        missing = [n for n, f in m.model_fields.items() if not (f.description or "").strip()]
        assert not missing, f"{m.__name__}: no description on {missing}"


# library functions whose keywords are config fields (the CLI calls them with its flags)
FUNCTIONS: list[tuple[Callable[..., Any], type[BaseModel], int]] = [
    (run_layers, LayersConfig, 4),
    (run_contrast, ContrastConfig, 5),
    (run_interpret, InterpretConfig, 6),
]


@pytest.mark.parametrize(
    ("function", "model", "least"), FUNCTIONS, ids=lambda f: getattr(f, "__name__", "")
)
def test_library_keyword_defaults_equal_the_config_defaults(
    function: Callable[..., Any], model: type[BaseModel], least: int
) -> None:
    compared = 0
    for name, param in inspect.signature(function).parameters.items():
        field = model.model_fields.get(name)
        if field is None or field.is_required() or param.default is inspect.Parameter.empty:
            continue
        want = field.get_default(call_default_factory=True)
        assert param.default == want, f"{function.__name__}({name}={param.default!r}) vs {want!r}"
        compared += 1
    assert compared >= least


def test_eval_sae_contexts_default_to_evaluate_sae() -> None:
    want = inspect.signature(evaluate_sae).parameters["n_contexts"].default
    assert EvalSAEConfig.model_fields["n_contexts"].default == want


def test_flag_limits_are_the_fields_limits() -> None:
    """A flag's min/max come from its field; a call site that disagrees is refused."""
    from pydantic import BaseModel, Field

    from crosslayer.cli._options import option_for

    class M(BaseModel):
        n: int = Field(default=3, ge=2, le=9, description="n")
        k: int = Field(default=3, gt=0, description="k")
        x: float = Field(default=0.5, gt=0, lt=1, description="x")

    assert (option_for(M, "n").min, option_for(M, "n").max) == (2, 9)
    assert option_for(M, "k").min == 1  # gt 0 on an integer: at least 1
    assert option_for(M, "x").min is None  # an open float bound is pydantic's to enforce
    with pytest.raises(TypeError, match="min=1 but the field has 2"):
        option_for(M, "n", min=1)
