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


REASONS = ("# local: import cycle with ", "# local: start-up cost")


def _unexplained_local_imports(source: str) -> list[int]:
    """Lines of function-local ``crosslayer`` imports without a reason: on the import's own
    lines, or as a comment line just above it or above the run of imports it belongs to."""
    lines = source.splitlines()

    def comment_above(line: int) -> bool:  # 1-based: a comment line of its own, with a reason
        above = lines[line - 2].strip() if line > 1 else ""
        return above.startswith("#") and any(r in above for r in REASONS)

    def explained(first: int, last: int) -> bool:
        return comment_above(first) or any(
            r in ln for ln in lines[first - 1 : last] for r in REASONS
        )

    bad: list[int] = []

    def check_body(body: list[ast.stmt]) -> None:
        block_start: int | None = None  # first line of the run of imports this one is in
        for stmt in body:
            if isinstance(stmt, ast.Import | ast.ImportFrom):
                block_start = stmt.lineno if block_start is None else block_start
                names = [stmt.module or ""] if isinstance(stmt, ast.ImportFrom) else []
                names += [a.name for a in stmt.names] if isinstance(stmt, ast.Import) else []
                ours = getattr(stmt, "level", 0) == 0 and any(
                    n == "crosslayer" or n.startswith("crosslayer.") for n in names
                )
                end = stmt.end_lineno or stmt.lineno
                why = explained(stmt.lineno, end) or comment_above(block_start)
                if ours and not why:
                    bad.append(stmt.lineno)
            else:
                block_start = None

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # typing only: never executed
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if inner:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    value = getattr(child, field, None)
                    if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                        check_body(value)
            visit(child, inner)

    visit(ast.parse(source), False)
    return sorted(set(bad))


def test_function_local_imports_say_why() -> None:
    """A ``crosslayer`` import inside a function is either an import cycle or a start-up cost,
    and says which (docs/architecture.md); any other belongs at the top of the module."""
    found = {
        f"{p.relative_to(SRC)}:{line}": p.read_text().splitlines()[line - 1].strip()
        for p in sorted(SRC.rglob("*.py"))
        for line in _unexplained_local_imports(p.read_text())
    }
    assert not found, "function-local imports without a reason:\n" + "\n".join(
        f"{k}: {v}" for k, v in found.items()
    )


def test_the_local_import_check_can_fail() -> None:
    source = """
def f():
    from crosslayer.store import open_store
    return open_store


def g():
    # local: start-up cost
    from crosslayer.sae import load_sae
    from crosslayer.store import open_store
    import numpy as np  # third-party: not this rule's business
    return load_sae, open_store, np


def h():
    x = 1
    from crosslayer import hub  # local: import cycle with crosslayer.hub
    from crosslayer import fs
    return x, hub, fs
"""
    assert _unexplained_local_imports(source) == [3, 18]
