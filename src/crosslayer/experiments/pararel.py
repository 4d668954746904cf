"""PARAREL fact files: groups of ``[prompt_with_[MASK], answer, relation]``.

The knowledge-neurons preparation of PARAREL (``data_nm.json``, ``data_11.json``) is a JSON list
of fact groups; each group holds the paraphrases of one fact. Study B filled ``[MASK]`` with the
gold answer and read the SAE latents at the first answer token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from crosslayer.corpus.files import read_text_file
from crosslayer.errors import CrosslayerError

MASK = "[MASK]"


@dataclass(frozen=True)
class Fact:
    """One paraphrase of a fact. ``prefix`` is the text before the answer once it is filled in."""

    group: int  # index of the fact group in the file
    prompt: str  # with [MASK]
    answer: str
    relation: str  # "P101(field of work)"

    @property
    def text(self) -> str:
        """The prompt with ``[MASK]`` replaced by the answer."""
        return self.prompt.replace(MASK, self.answer, 1)

    @property
    def prefix(self) -> str:
        """The text before the answer (may be empty when the prompt starts with ``[MASK]``)."""
        return self.prompt.split(MASK, 1)[0]


def relation_code(relation: str) -> str:
    """``"P101(field of work)"`` -> ``"P101"``: users may give either form."""
    return relation.split("(", 1)[0].strip()


def read_facts(
    path: str | Path, *, relation: str | None = None, n_groups: int | None = None
) -> list[list[Fact]]:
    """Read fact groups, keep those of ``relation`` (code "P101" or full label), the first
    ``n_groups`` of them. Every entry is checked; a bad one is named by group and entry index."""
    path = Path(path)
    if not path.is_file():
        raise CrosslayerError(f"fact file {path} not found", "pass a PARAREL JSON file")

    try:
        raw = json.loads(read_text_file(path, "fact file"))
    except json.JSONDecodeError as e:
        raise CrosslayerError(f"{path} is not valid JSON ({e})", "pass a PARAREL JSON file") from e
    if not isinstance(raw, list) or not raw:
        raise CrosslayerError(
            f"{path} is not a non-empty list of fact groups",
            "use the knowledge-neurons format: lists of [prompt_with_[MASK], answer, relation]",
        )
    if n_groups is not None and n_groups < 1:
        raise CrosslayerError(f"n_groups = {n_groups}", "ask for at least one fact group")
    groups: list[list[Fact]] = []
    relations: set[str] = set()
    for g, group in enumerate(raw):
        facts = [
            _parse_entry(path, g, i, entry) for i, entry in enumerate(_entries(path, g, group))
        ]
        relations.update(f.relation for f in facts)
        if relation is None or any(
            relation in (f.relation, relation_code(f.relation)) for f in facts
        ):
            groups.append(facts)
        if n_groups is not None and len(groups) == n_groups:
            break
    if not groups:
        codes = sorted({relation_code(r) for r in relations})
        raise CrosslayerError(
            f"relation {relation!r} is not in {path}",
            f"choose one of {', '.join(codes[:20])}{' ...' if len(codes) > 20 else ''}",
        )
    return groups


def _entries(path: Path, g: int, group: object) -> list[object]:
    if not isinstance(group, list) or not group:
        raise CrosslayerError(
            f"{path}: fact group {g} is not a non-empty list", "each group is a list of entries"
        )
    return group


def _parse_entry(path: Path, g: int, i: int, entry: object) -> Fact:
    where = f"{path}: group {g} entry {i}"
    if not (isinstance(entry, list) and len(entry) == 3 and all(isinstance(x, str) for x in entry)):
        raise CrosslayerError(
            f"{where} is not [prompt_with_[MASK], answer, relation]: {entry!r:.80}",
            "fix the entry or remove it",
        )
    prompt, answer, relation = entry
    if MASK not in prompt:
        raise CrosslayerError(f"{where}: '[MASK]' absent from {prompt!r}", "mark the answer slot")
    if not answer.strip():
        raise CrosslayerError(f"{where}: empty answer for {prompt!r}", "give the gold answer")
    return Fact(group=g, prompt=prompt, answer=answer, relation=relation)


def subject(group: list[Fact]) -> str | None:
    """The longest text every paraphrase of a fact shares (its subject, e.g. "Alan Turing");
    None for a group of one prompt, where nothing tells the subject from the template."""
    prompts = [f.prompt.replace(MASK, "\0") for f in group]
    if len(prompts) < 2:
        return None
    short = min(prompts, key=len)
    for size in range(len(short), 2, -1):
        for start in range(len(short) - size + 1):
            part = short[start : start + size]
            if "\0" not in part and part.strip() and all(part in p for p in prompts):
                return part.strip()
    return None


def template(fact: Fact, subject_text: str | None) -> str:
    """The prompt with its subject replaced by ``[X]``: paraphrase templates of PARAREL
    ("[X] works in the field of [MASK].") are shared across facts, so pairs of prompts can
    be told apart by template as well as by fact."""
    return fact.prompt if not subject_text else fact.prompt.replace(subject_text, "[X]")
