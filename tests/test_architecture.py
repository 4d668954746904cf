"""The house's layering, checked on the source: what may import what (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "crosslayer"


def _imports(path: Path) -> set[str]:
    """Every ``crosslayer...`` module a file imports, at the top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("crosslayer")}


def _library_files() -> list[Path]:
    return [
        p
        for p in sorted(SRC.rglob("*.py"))
        if "cli" not in p.relative_to(SRC).parts and p.name != "__main__.py"
    ]


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_library_does_not_import_the_cli(path: Path) -> None:
    assert not {m for m in _imports(path) if m.startswith("crosslayer.cli")}


def test_distributed_sits_below_store_and_estimators() -> None:
    """store.collect imports distributed, so distributed must import neither store nor the
    estimators (it only sums statistics; the typed import of SufficientStats is for mypy)."""
    bad = {
        m
        for m in _imports(SRC / "distributed.py")
        if m.startswith(("crosslayer.store", "crosslayer.transcoder", "crosslayer.probes"))
    }
    assert not bad
