"""Text corpora for the harvester: files or folders, JSONL, Parquet, and the embedded default.

A corpus is a deterministic sequence of documents `(doc_id, text)`; `doc_id` is the document's
index in that sequence (skipped documents keep their index, so ids are stable across runs and
resumes). The embedded default is the Python standard library's own `.py` source: real English
prose and code that every machine with Python has, with no download.
"""
from __future__ import annotations

import dataclasses
import json
import sysconfig
from pathlib import Path
from typing import Iterator, Protocol

FORMATS = ("text", "jsonl", "parquet")
ON_BAD_UTF8 = ("skip", "fail")
_DEFAULT_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "__pycache__", "idle_test"}


class CorpusError(ValueError):
    """A corpus that cannot be read as asked: empty, missing field/column, bad UTF-8 (fail)."""


@dataclasses.dataclass(frozen=True)
class Document:
    doc_id: int
    text: str


@dataclasses.dataclass
class Corpus:
    """Documents of one source. `skipped_bad_utf8` counts documents skipped for invalid UTF-8."""

    spec: str
    format: str
    field: str = "text"
    on_bad_utf8: str = "skip"
    skipped_bad_utf8: int = 0

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise CorpusError(f"unknown corpus format {self.format!r}; valid: {', '.join(FORMATS)}")
        if self.on_bad_utf8 not in ON_BAD_UTF8:
            raise CorpusError(
                f"on_bad_utf8 must be one of {', '.join(ON_BAD_UTF8)}, got {self.on_bad_utf8!r}")

    @property
    def description(self) -> dict[str, str]:
        """JSON identity of the corpus (stored in the activation store's metadata)."""
        d = {"spec": self.spec, "format": self.format}
        if self.format in ("jsonl", "parquet"):
            d["field"] = self.field
        return d

    def documents(self, start: int = 0) -> Iterator[Document]:
        """Documents with doc_id >= start, in corpus order; raises CorpusError if there are none
        at all (an empty corpus), counting skipped bad-UTF-8 documents in `skipped_bad_utf8`."""
        self.skipped_bad_utf8 = 0
        seen_any = False
        for doc_id, raw in self._raw(start):
            text = self._decode(raw, doc_id)
            if text is None:
                continue
            seen_any = True
            if text:
                yield Document(doc_id, text)
        if not seen_any and start == 0:
            raise CorpusError(f"corpus {self.spec!r} ({self.format}) has no documents"
                              f" ({self.skipped_bad_utf8} skipped as invalid UTF-8)")

    # -- sources ----------------------------------------------------------------------------------
    def _raw(self, start: int) -> Iterator[tuple[int, bytes | str]]:
        if self.format == "text":
            for i, path in enumerate(text_files(self.spec)):
                if i >= start:
                    yield i, path.read_bytes()
        elif self.format == "jsonl":
            yield from self._jsonl(start)
        else:
            yield from self._parquet(start)

    def _jsonl(self, start: int) -> Iterator[tuple[int, bytes | str]]:
        path = Path(self.spec)
        if not path.is_file():
            raise CorpusError(f"JSONL corpus not found: {path}")
        with path.open("rb") as f:
            for i, line in enumerate(f):
                if i < start or not line.strip():
                    continue
                try:
                    line_text = line.decode("utf-8")
                except UnicodeDecodeError:
                    yield i, line  # handled (skip or fail) by _decode
                    continue
                try:
                    record = json.loads(line_text)
                except json.JSONDecodeError as e:
                    raise CorpusError(f"{path}: line {i + 1} is not valid JSON: {e}") from None
                if not isinstance(record, dict) or self.field not in record:
                    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                    raise CorpusError(
                        f"{path}: line {i + 1} has no field {self.field!r}; fields present: {keys}")
                value = record[self.field]
                if not isinstance(value, str):
                    raise CorpusError(f"{path}: line {i + 1} field {self.field!r} is "
                                      f"{type(value).__name__}, expected a string")
                yield i, value

    def _parquet(self, start: int) -> Iterator[tuple[int, bytes | str]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(self.spec)
        if not path.is_file():
            raise CorpusError(f"Parquet corpus not found: {path}")
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        if self.field not in names:
            raise CorpusError(f"{path}: no column {self.field!r}; columns present: {names}")
        kind = pf.schema_arrow.field(self.field).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
            raise CorpusError(f"{path}: column {self.field!r} has type {kind}, expected string")
        i = 0
        for batch in pf.iter_batches(columns=[self.field], batch_size=1024):
            column = batch.column(0)
            if i + len(column) <= start:
                i += len(column)
                continue
            for value in column.to_pylist():
                if i >= start and value is not None:
                    yield i, value
                i += 1

    def _decode(self, raw: bytes | str, doc_id: int) -> str | None:
        if isinstance(raw, str):
            return raw
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if self.on_bad_utf8 == "fail":
                raise CorpusError(
                    f"corpus {self.spec!r}: document {doc_id} is not valid UTF-8 ({e}); "
                    "use on_bad_utf8='skip' (--on-bad-utf8 skip) to skip and count such documents"
                ) from None
            self.skipped_bad_utf8 += 1
            return None


def default_corpus_root() -> Path:
    """The running Python's standard library folder (sysconfig's `stdlib` path)."""
    return Path(sysconfig.get_paths()["stdlib"])


def default_corpus_files() -> list[Path]:
    """The standard library's `.py` files, sorted, without site-packages and test folders."""
    root = default_corpus_root()
    files = [p for p in root.rglob("*.py")
             if not _DEFAULT_SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def text_files(spec: str) -> list[Path]:
    """The files of a text corpus: the default's, one file, or a folder's (recursive, sorted,
    hidden files and folders excluded)."""
    if spec == "default":
        return default_corpus_files()
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(path).parts)]
        return sorted(files, key=lambda p: p.relative_to(path).as_posix())
    raise CorpusError(f"corpus path not found: {spec!r} (expected 'default', a file or a folder)")


def open_corpus(spec: str = "default", format: str | None = None, field: str = "text",
                on_bad_utf8: str = "skip") -> Corpus:
    """A corpus from `spec` ('default', a path); `format` inferred from the suffix when None
    (.jsonl/.json -> jsonl, .parquet -> parquet, anything else -> text)."""
    if format is None:
        suffix = Path(spec).suffix.lower()
        format = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}.get(suffix, "text")
    if spec == "default" and format != "text":
        raise CorpusError(f"the default corpus is text, not {format!r}")
    return Corpus(spec=spec, format=format, field=field, on_bad_utf8=on_bad_utf8)


class _Tokenizer(Protocol):
    bos_id: int

    def encode(self, text: str, add_bos: bool = ...) -> list[int]: ...


@dataclasses.dataclass(frozen=True)
class Window:
    """One model input: BOS + up to context-1 tokens of document `doc_id` (window `index`)."""

    ordinal: int  # index in the whole stream of windows
    doc_id: int
    index: int
    ids: list[int]


def iter_windows(tokenizer: _Tokenizer, corpus: Corpus, context: int,
                 start: dict[str, int] | None = None) -> Iterator[Window]:
    """The corpus cut into model inputs, from resume position `start` (a harvest user_state).

    Sequences are cut, not packed: each document is tokenised on its own and split into windows
    of `context - 1` tokens, each preceded by BOS, so every token sees only its own document. The
    harvester and `jaxdict eval --corpus` both cut text here."""
    ordinal = 0 if start is None else start["chunks"]
    first_doc = 0 if start is None else start["doc"]
    first_index = 0 if start is None else start["chunk_in_doc"]
    step = context - 1
    for doc in corpus.documents(first_doc):
        ids = tokenizer.encode(doc.text, add_bos=False)
        begin = first_index if doc.doc_id == first_doc else 0
        for index in range(begin, -(-len(ids) // step)):
            yield Window(ordinal, doc.doc_id, index,
                         [tokenizer.bos_id, *ids[index * step:(index + 1) * step]])
            ordinal += 1
