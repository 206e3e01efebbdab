"""Corpus readers: text files/folders, JSONL, Parquet, the stdlib default, and their bad inputs."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxdict.corpus import CorpusError, default_corpus_files, open_corpus


def _texts(corpus, start=0):
    return [(d.doc_id, d.text) for d in corpus.documents(start)]


def test_text_folder_is_sorted_recursive_and_skips_hidden(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("zed")
    (tmp_path / "a.md").write_text("alpha")
    (tmp_path / ".hidden").write_text("no")
    (tmp_path / "c.txt").write_text("")  # empty: keeps its id, yields nothing
    (tmp_path / "d.txt").write_text("delta")
    corpus = open_corpus(str(tmp_path))
    assert _texts(corpus) == [(0, "alpha"), (1, "zed"), (3, "delta")]
    assert _texts(corpus, start=2) == [(3, "delta")]
    assert _texts(open_corpus(str(tmp_path / "d.txt"))) == [(0, "delta")]


def test_jsonl_field_and_errors(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in
                              [{"text": "one", "x": 1}, {"text": "two"}, {"body": "three"}]))
    corpus = open_corpus(str(path))
    assert corpus.format == "jsonl"
    with pytest.raises(CorpusError, match=r"line 3 has no field 'text'; fields present: \['body'\]"):
        _texts(corpus)
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"body": "a"}\n\n{"body": "b"}\n')
    assert _texts(open_corpus(str(ok), field="body")) == [(0, "a"), (2, "b")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": 5}\n')
    with pytest.raises(CorpusError, match="is int, expected a string"):
        _texts(open_corpus(str(bad)))


def test_parquet_column_and_errors(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"content": ["first", None, "third"], "n": [1, 2, 3]}), path)
    assert _texts(open_corpus(str(path), field="content")) == [(0, "first"), (2, "third")]
    assert _texts(open_corpus(str(path), field="content"), start=1) == [(2, "third")]
    with pytest.raises(CorpusError, match=r"no column 'text'; columns present: \['content', 'n'\]"):
        _texts(open_corpus(str(path)))
    with pytest.raises(CorpusError, match="column 'n' has type int64, expected string"):
        _texts(open_corpus(str(path), field="n"))


def test_bad_utf8_skip_counts_or_fails(tmp_path):
    (tmp_path / "a.txt").write_text("good")
    (tmp_path / "b.txt").write_bytes(b"bad \xff\xfe bytes")
    (tmp_path / "c.txt").write_text("also good")
    skip = open_corpus(str(tmp_path), on_bad_utf8="skip")
    assert _texts(skip) == [(0, "good"), (2, "also good")]
    assert skip.skipped_bad_utf8 == 1
    with pytest.raises(CorpusError, match="document 1 is not valid UTF-8"):
        _texts(open_corpus(str(tmp_path), on_bad_utf8="fail"))
    jl = tmp_path.parent / "u.jsonl"
    jl.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    skip = open_corpus(str(jl))
    assert _texts(skip) == [(0, "ok")] and skip.skipped_bad_utf8 == 1


def test_empty_and_missing_corpora(tmp_path):
    with pytest.raises(CorpusError, match="has no documents"):
        _texts(open_corpus(str(tmp_path)))
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(CorpusError, match="has no documents"):
        _texts(open_corpus(str(empty)))
    with pytest.raises(CorpusError, match="not found"):
        _texts(open_corpus(str(tmp_path / "nope")))
    with pytest.raises(CorpusError, match="unknown corpus format 'csv'"):
        open_corpus("x", format="csv")
    with pytest.raises(CorpusError, match="on_bad_utf8 must be one of skip, fail"):
        open_corpus("x", on_bad_utf8="ignore")


def test_default_corpus_is_stdlib_source_without_tests():
    files = default_corpus_files()
    names = [f.name for f in files]
    assert len(files) > 300 and "functools.py" in names and "os.py" in names
    assert not any("site-packages" in f.parts or "test" in f.parts for f in files)
    assert files == default_corpus_files()  # deterministic order
    first = next(open_corpus("default").documents())
    assert first.doc_id == 0 and len(first.text) > 0
