"""Assemble BENCHMARKS.md from the hand-written summary and every ``results/*.md``.

python -m benchmarks.assemble
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
ORDER = (
    "collect",
    "model_load",
    "store_format",
    "transcoder",
    "probes",
    "probes_resid",
    "sae_train",
    "memory",
    "study_a",
    "main_job",
    "interpret",
)


def _demote_headings(text: str) -> str:
    """One heading level down, so each results file is a section of this page."""
    out, fenced = [], False
    for line in text.splitlines():
        fenced ^= line.startswith("```")
        out.append("#" + line if line.startswith("#") and not fenced else line)
    return "\n".join(out)


def assemble() -> str:
    parts = [(HERE / "BENCHMARKS_HEADER.md").read_text().rstrip()]
    names = [
        *ORDER,
        *sorted(p.stem for p in (HERE / "results").glob("*.md") if p.stem not in ORDER),
    ]
    for name in names:
        path = HERE / "results" / f"{name}.md"
        if path.is_file():
            text = path.read_text().strip()
            parts.append(f"<!-- from benchmarks/results/{name}.md -->\n{_demote_headings(text)}")
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    (HERE.parent / "BENCHMARKS.md").write_text(assemble())
