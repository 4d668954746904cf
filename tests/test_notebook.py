"""The example notebook runs top to bottom (on a tiny model, via ``CROSSLAYER_TINY=1``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    monkeypatch.setenv("CROSSLAYER_TINY", "1")
    monkeypatch.setenv("CROSSLAYER_OUT", str(out))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env={**os.environ})
    printed = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "transcoder explained variance (held-out)" in printed
    assert f"open {out / 'report.html'}" in printed
    assert 'data-kind="study_a"' in (out / "report.html").read_text(encoding="utf-8")
    # the reuse cells: the run loads into DataFrames and the splice leaves the model clean
    assert "residual-SAE features probed" in printed
    assert "clean again after the block: True" in printed
