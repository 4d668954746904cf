"""Hugging Face datasets: ``hf:PATH[:CONFIG][:SPLIT]`` (streamed) or a ``save_to_disk`` dir."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from crosslayer import hub
from crosslayer.corpus.base import TextCorpus
from crosslayer.errors import CrosslayerError

DEFAULT_SPLIT = "train"


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """``hf:PATH[:CONFIG][:SPLIT]`` → (path, config or None, split). ``hf:a::test`` skips CONFIG."""
    parts = spec.removeprefix("hf:").split(":")
    if not parts[0] or len(parts) > 3 or (len(parts) == 3 and not parts[2]):
        raise CrosslayerError(
            f"malformed dataset spec {spec!r}",
            "write hf:PATH[:CONFIG][:SPLIT], e.g. hf:wikitext:wikitext-2-raw-v1:train",
        )
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) == 3 else DEFAULT_SPLIT
    return parts[0], config, split


def is_saved_dataset(path: Path) -> bool:
    """True for a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _rows(rows: Iterable[dict[str, Any]], text_field: str, where: str) -> Iterator[tuple[str, str]]:
    for i, row in enumerate(rows):
        if text_field not in row:
            raise CrosslayerError(
                f"{where} row {i} has no field {text_field!r} (fields: {', '.join(row)})",
                "pass --text-field with one of those",
            )
        title = row.get("title")
        yield (title if isinstance(title, str) else ""), (row[text_field] or "")


def load_saved(path: Path, text_field: str, split: str = DEFAULT_SPLIT) -> TextCorpus:
    """A dataset saved with ``save_to_disk`` (a ``DatasetDict`` gives ``split``)."""
    # local: start-up cost (datasets, only for hf: corpora)
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise CrosslayerError(
                f"saved dataset {path} has no split {split!r} (splits: {', '.join(ds)})",
                f"use hf:{path}::SPLIT with one of those",
            )
        ds = ds[split]
    if text_field not in ds.column_names:
        raise CrosslayerError(
            f"saved dataset {path} has no column {text_field!r} "
            f"(columns: {', '.join(ds.column_names)})",
            "pass --text-field with one of those",
        )
    columns = [c for c in (text_field, "title") if c in ds.column_names]
    table = ds.select_columns(columns)
    return TextCorpus(
        name=str(path),
        records=lambda: _rows(table, text_field, str(path)),
        source={
            "kind": "hf_saved",
            "path": str(path.resolve()),
            "split": split,
            "text_field": text_field,
            "fingerprint": ds._fingerprint,  # datasets' own content hash of the table
        },
    )


def load_hf(spec: str, text_field: str) -> TextCorpus:
    """``hf:PATH[:CONFIG][:SPLIT]``: a local saved dataset, else the hub, streamed."""
    path, config, split = parse_hf_spec(spec)
    if Path(path).is_dir() and is_saved_dataset(Path(path)):
        corpus = load_saved(Path(path), text_field, split)
        corpus.name = spec
        return corpus

    if not Path(path).exists():  # a hub dataset: streamed, so it needs the network
        hub.require_hub(
            f"dataset {path!r} is not local (hub datasets are streamed from the hub)",
            hub.offline_fix("dataset", path),
        )

    def records() -> Iterator[tuple[str, str]]:
        # local: start-up cost (datasets)
        import datasets

        try:
            with hub.quiet():
                ds = datasets.load_dataset(path, config, split=split, streaming=True)
        except Exception as e:  # datasets raises many types: offline, not found, bad config
            raise CrosslayerError(
                f"could not open dataset {spec!r}: {str(e).splitlines()[0] if str(e) else e!r}",
                "check PATH/CONFIG/SPLIT and that the hub (or HF_DATASETS_CACHE) is reachable",
            ) from e
        yield from _rows(ds, text_field, spec)

    return TextCorpus(
        name=spec,
        records=records,
        source=dict(kind="hf", path=path, config=config, split=split, text_field=text_field),
        countable=False,
    )
