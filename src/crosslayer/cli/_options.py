"""Typer options derived from the config models, so that a flag's default and help cannot
drift from its config field (``tests/test_cli_config_drift.py`` checks every command)."""

from __future__ import annotations

from typing import Any

import annotated_types
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
    for key, value in field_range(field).items():
        # A limit written at the call site must be the field's own: the flag cannot be
        # looser or stricter than the config it fills.
        if key in kwargs and kwargs[key] != value:
            raise TypeError(
                f"{model.__name__}.{name}: {key}={kwargs[key]} but the field has {value}"
            )
        kwargs[key] = value
    return typer.Option(default, *param_decls, help=field.description, **kwargs)


def field_range(field: FieldInfo) -> dict[str, Any]:
    """Click's inclusive ``min``/``max`` from the field's ``ge``/``le`` (and ``gt`` on an
    integer field, as ``gt + 1``). A float ``gt``/``lt`` has no inclusive form: pydantic
    enforces it when the config is built."""
    out: dict[str, Any] = {}
    is_int = field.annotation is int or str(field.annotation) in (
        "int | None",
        "typing.Optional[int]",
    )
    for m in field.metadata:
        if isinstance(m, annotated_types.Ge):
            out["min"] = m.ge
        elif isinstance(m, annotated_types.Gt) and is_int:
            out["min"] = int(m.gt) + 1  # type: ignore[call-overload]
        elif isinstance(m, annotated_types.Le):
            out["max"] = m.le
        elif isinstance(m, annotated_types.Lt) and is_int:
            out["max"] = int(m.lt) - 1  # type: ignore[call-overload]
    return out
