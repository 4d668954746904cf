"""One self-contained HTML report of a run directory.

:func:`write_report` reads every ``results.json`` in a run directory (study A from
``crosslayer run``; study B's ``layers``, ``contrast``, ``interpret``), embeds their PNG
plots as data URIs, adds latent dashboards, and renders ``templates/report.html.j2`` with
jinja2 (autoescape on) into ``RUN_DIR/report.html``. The page loads nothing from the network
and runs no script.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2

from crosslayer import fs
from crosslayer.metrics import format_p
from crosslayer.provenance import versions
from crosslayer.report.dashboards import (
    Dashboard,
    study_a_anchor,
    study_a_dashboards,
    study_b_anchor,
    study_b_dashboards,
)
from crosslayer.report.sections import Section, find_sections
from crosslayer.rundir import RunDir

__all__ = ["Dashboard", "Section", "find_sections", "render_report", "write_report"]


def num(value: Any, digits: int = 4) -> str:
    """A number as the report prints it: ``digits`` decimals, "–" for missing/NaN."""
    if value is None or isinstance(value, str):
        return "–" if value is None else value
    if isinstance(value, bool | int):
        return f"{value:,}" if not isinstance(value, bool) else str(value)
    if not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def pval(value: Any) -> str:
    """A p-value (:func:`crosslayer.metrics.format_p`)."""
    return format_p(value)


def prel(value: Any) -> str:
    """A p-value with its relation: ``= 0.03`` or ``< 1e-300``."""
    return format_p(value, relation=True)


def pct(value: Any, digits: int = 1) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f}%"


def flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested config as dotted ``(key, value)`` rows."""
    if not isinstance(d, dict):
        return [(prefix, d)]
    rows: list[tuple[str, Any]] = []
    for k, v in d.items():
        rows += flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]
    return rows


def environment() -> jinja2.Environment:
    """The report's jinja2 environment: package templates, autoescape on, strict undefined."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("crosslayer.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=num, pval=pval, prel=prel, pct=pct, flatten=flatten)
    env.globals.update(study_a_anchor=study_a_anchor, study_b_anchor=study_b_anchor)
    return env


def render_report(run_dir: str | Path, *, model: Any = None) -> str:
    """The report of ``run_dir`` as an HTML string (see :func:`write_report`)."""
    run_dir = Path(run_dir)
    sections = find_sections(run_dir)
    dashboards: list[Dashboard] = []
    for s in sections:
        if s.kind == "study_a":
            dashboards += study_a_dashboards(s.path, s.results, model=model)
        elif s.kind == "interpret":
            dashboards += study_b_dashboards(s.results)
    first = sections[0].results
    return (
        environment()
        .get_template("report.html.j2")
        .render(
            run_dir=str(run_dir),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            sections=sections,
            dashboards=dashboards,
            anchors={d.anchor for d in dashboards},
            model=first.get("model", {}),
            config=first.get("config", {}),
            run_versions=first.get("versions", {}),
            report_versions=versions(),
        )
    )


def write_report(run_dir: str | Path, *, model: Any = None, out: str | Path | None = None) -> Path:
    """Write one self-contained ``report.html`` for a run directory and return its path.

    ``model``: the run's :class:`~crosslayer.model.LoadedModel`, when at hand (``crosslayer
    run`` passes it): study A's dashboards then colour every context token by its activation
    and list the tokens each feature promotes. ``out`` defaults to ``RUN_DIR/report.html``.
    """
    html = render_report(run_dir, model=model)
    path = Path(out) if out is not None else RunDir(Path(run_dir)).report
    fs.atomic_write_bytes(path, html.encode("utf-8"))
    return path
