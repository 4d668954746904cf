"""Typer options derived from the config models, so that a flag's default and help cannot
drift from its config field (``tests/test_cli_config_drift.py`` checks every command)."""

from __future__ import annotations

from typing import Any

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

_FROM_FIELD: Any = object()


def config_field(model: type[BaseModel], name: str) -> FieldInfo:
    """The field ``name`` of ``model``; dotted for a section (``"sae_training.width"``)."""
    *sections, leaf = name.split(".")
    for section in sections:
        annotation = model.model_fields[section].annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel), name
        model = annotation
    return model.model_fields[leaf]


def option_for(
    model: type[BaseModel],
    name: str,
    *param_decls: str,
    default: Any = _FROM_FIELD,
    **kwargs: Any,
) -> Any:
    """``typer.Option`` for the config field ``name``: its description is the help, its
    default the flag's default (``...`` if the field is required) unless ``default`` is given
    (e.g. None where the config file or profile supplies the value)."""
    field = config_field(model, name)
    if field.description is None:
        raise TypeError(f"{model.__name__}.{name} has no description")
    if default is _FROM_FIELD:
        default = ... if field.is_required() else field.get_default(call_default_factory=True)
    return typer.Option(default, *param_decls, help=field.description, **kwargs)
