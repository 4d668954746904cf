"""CLI flags and the config models they fill must agree: same names, same defaults.

A flag written out by hand can drift from its config field (``train-sae --epochs`` once
defaulted to 4 while ``SAETrainConfig.epochs`` was 3). For every sub-command built on a
config model, each flag that names a field of the model must default to the field's default.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from crosslayer.cli.collect import collect_command
from crosslayer.cli.train_sae import train_sae_command
from crosslayer.sae import SAETrainConfig
from crosslayer.store import CollectConfig

# (command, its config model, flags whose field has another name: flag -> field)
COMMANDS: list[tuple[Callable[..., Any], type[BaseModel], dict[str, str]]] = [
    (train_sae_command, SAETrainConfig, {"tokens": "n_tokens"}),
    (collect_command, CollectConfig, {}),
]


def _flags(command: Callable[..., Any]) -> dict[str, Any]:
    """``{parameter name: typer default}`` of a typer command's options."""
    out = {}
    for name, param in inspect.signature(command).parameters.items():
        info = param.default
        out[name] = getattr(info, "default", info)
    return out


@pytest.mark.parametrize(
    ("command", "model", "renamed"), COMMANDS, ids=lambda c: getattr(c, "__name__", "")
)
def test_flag_defaults_equal_the_config_defaults(
    command: Callable[..., Any], model: type[BaseModel], renamed: dict[str, str]
) -> None:
    fields = model.model_fields
    compared = 0
    for flag, default in _flags(command).items():
        field = renamed.get(flag, flag)
        if field not in fields:
            continue  # a CLI-only flag (--overwrite, --progress, inputs and outputs)
        if fields[field].is_required() or default is ...:
            continue  # required on both sides
        want = fields[field].get_default(call_default_factory=True)
        if default is None or want is None:
            continue  # "not given": the config's own default applies
        where = f"{model.__name__}.{field}"
        assert default == want, f"--{flag.replace('_', '-')} is {default!r}, {where} {want!r}"
        compared += 1
    assert compared >= 3  # the test must see the command's flags at all
