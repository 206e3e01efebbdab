"""ActivationStore: read-only view of the published shards of a store, as one logical row range."""
from __future__ import annotations

from typing import Any

import numpy as np
import tensorstore as ts

from jaxdict.store.blobs import CONTEXT, join, read_json
from jaxdict.store.errors import (
    CorruptShardError,
    ManifestMismatchError,
    StoreIncompatibleError,
    StoreNotFoundError,
)
from jaxdict.store.layout import (
    ACTS,
    HEADER_NAME,
    META_DTYPES,
    array_spec,
    check_header,
    numpy_dtype,
    shard_file,
)
from jaxdict.store.manifest import ShardInfo, merge_parts, read_parts


class ActivationStore:
    """The published rows of an activation store. Use `open_store(path)`.

    Logical row r is row (r - shard.start) of the published shard containing it; shards are taken
    in slot order. Unpublished slots (a writer still working, or one that crashed) are invisible.
    """

    def __init__(self, path: str, header: dict, parts: list[dict]):
        self.path = path
        self.header = header
        self.d_in: int = header["d_in"]
        self.dtype: str = header["dtype"]
        self.shard_rows: int = header["shard_rows"]
        self._parts = parts
        n_published = sum(len(p.get("shards", [])) for p in parts)
        self._arrays: dict[str, ts.TensorStore] = {}
        for name in (ACTS, *META_DTYPES):
            try:
                spec = array_spec(path, name, header, create=False)
                self._arrays[name] = ts.open(spec, context=CONTEXT).result()
            except ValueError as e:
                if not n_published:
                    continue  # nothing published yet: the arrays may not exist
                raise ManifestMismatchError(
                    f"store {path}: array {name!r} cannot be opened although the manifest "
                    f"publishes {n_published} shards: {e}"
                ) from e
        # Arrays against the header first: their disagreement is the more telling message.
        self._check_arrays_match_header()
        self.shards, self._stats = merge_parts(path, header, parts)
        self.n_rows: int = sum(s.rows for s in self.shards)
        self._starts = np.array([s.start for s in self.shards], np.int64)

    def _check_arrays_match_header(self) -> None:
        want = {ACTS: (self.dtype, self.d_in)}
        want.update({name: (dt.name, None) for name, dt in META_DTYPES.items()})
        for name, (dtype, d_in) in want.items():
            arr = self._arrays.get(name)
            if arr is None:
                continue
            if arr.dtype.name != dtype:
                raise ManifestMismatchError(
                    f"store {self.path}: header says {name} dtype {dtype!r} but the zarr array "
                    f"holds {arr.dtype.name!r}"
                )
            if d_in is not None and (arr.ndim != 2 or arr.shape[1] != d_in):
                raise ManifestMismatchError(
                    f"store {self.path}: header says d_in={d_in} but the {name} array has shape "
                    f"{tuple(arr.shape)}"
                )
            chunk = arr.chunk_layout.write_chunk.shape[0]
            if chunk != self.shard_rows:
                raise ManifestMismatchError(
                    f"store {self.path}: header says shard_rows={self.shard_rows} but the {name} "
                    f"array has shards of {chunk} rows"
                )

    @property
    def manifest(self) -> dict:
        """Header and merged manifest parts as one JSON-like dict."""
        return {
            **{k: v for k, v in self.header.items()},
            "n_rows": self.n_rows,
            "shards": [
                {"slot": s.slot, "writer": s.writer, "rows": s.rows, "start": s.start,
                 "crc32": s.crc32, "sum_sq_norm": s.sum_sq_norm}
                for s in self.shards
            ],
            "writers": [
                {"writer_index": p["writer_index"], "rows_published": p["rows_published"],
                 "resume_state": p["resume_state"]}
                for p in sorted(self._parts, key=lambda p: p["writer_index"])
            ],
        }

    @property
    def stats(self) -> dict:
        """{"count": rows, "mean": float64 [d_in], "mean_sq_norm": E||x||^2} over published rows."""
        return {"count": self._stats["count"], "mean": self._stats["mean"].copy(),
                "mean_sq_norm": self._stats["mean_sq_norm"]}

    @property
    def nbytes(self) -> int:
        per_row = self.d_in * numpy_dtype(self.dtype).itemsize + sum(
            dt.itemsize for dt in META_DTYPES.values())
        return self.n_rows * per_row

    @property
    def metadata(self) -> dict:
        return dict(self.header["metadata"])

    def check_compatible(self, d_in: int, dtype: str | None = None) -> None:
        """Raise StoreIncompatibleError, naming both values, if d_in (or dtype) differ."""
        if d_in != self.d_in:
            raise StoreIncompatibleError(
                f"store {self.path} holds activations of d_in={self.d_in}, but d_in={d_in} "
                f"was requested"
            )
        if dtype is not None and dtype != self.dtype:
            raise StoreIncompatibleError(
                f"store {self.path} holds dtype {self.dtype!r}, but dtype {dtype!r} was requested"
            )

    def _pieces(self, start: int, stop: int) -> list[tuple[ShardInfo, int, int]]:
        """(shard, first store row, last store row + 1) for each shard overlapping [start, stop)."""
        if not (isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer))
                and 0 <= start <= stop <= self.n_rows):
            raise IndexError(
                f"row range [{start}, {stop}) is outside the store's [0, {self.n_rows})"
            )
        pieces = []
        k = int(np.searchsorted(self._starts, start, side="right")) - 1
        while start < stop:
            s = self.shards[k]
            hi = min(stop, s.start + s.rows)
            base = s.slot * self.shard_rows - s.start
            pieces.append((s, base + start, base + hi))
            start = hi
            k += 1
        return pieces

    def _read(self, name: str, ranges: list[tuple[int, int]]) -> np.ndarray:
        pieces = [p for a, b in ranges for p in self._pieces(a, b)]
        arr = self._arrays.get(name)
        if arr is None:
            return np.zeros((0, self.d_in) if name == ACTS else (0,), self._dtype_of(name))
        futures = [(s, arr[lo:hi].read()) for s, lo, hi in pieces]
        out = []
        for s, f in futures:
            try:
                out.append(f.result())
            except ValueError as e:
                raise self._corrupt(s, name, e) from e
        if not out:
            return np.zeros((0, self.d_in) if name == ACTS else (0,), self._dtype_of(name))
        return np.concatenate(out) if len(out) > 1 else out[0]

    def _dtype_of(self, name: str) -> np.dtype:
        return numpy_dtype(self.dtype) if name == ACTS else META_DTYPES[name]

    def _corrupt(self, s: ShardInfo, name: str, error: Exception) -> CorruptShardError:
        return CorruptShardError(
            f"shard slot {s.slot} (writer {s.writer}, logical rows {s.start}..{s.start + s.rows}, "
            f"file {join(self.path, shard_file(name, s.slot))}) cannot be read: {error}",
            slot=s.slot,
        )

    def read(self, start: int, stop: int) -> np.ndarray:
        """Activations of logical rows [start, stop): [stop - start, d_in] in the store dtype."""
        return self._read(ACTS, [(start, stop)])

    def read_ranges(self, ranges: list[tuple[int, int]]) -> np.ndarray:
        """Activations of several logical row ranges, concatenated; all reads are issued at once."""
        return self._read(ACTS, ranges)

    def read_column(self, name: str, start: int, stop: int) -> np.ndarray:
        """One of "acts", "token_ids", "doc_ids", "positions" for logical rows [start, stop)."""
        if name not in (ACTS, *META_DTYPES):
            raise ValueError(f"column must be one of {(ACTS, *META_DTYPES)}, got {name!r}")
        return self._read(name, [(start, stop)])

    def read_meta(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """token_ids [n] int32, doc_ids [n] int64, positions [n] int32 of logical rows [start, stop)."""
        return {name: self._read(name, [(start, stop)]) for name in META_DTYPES}

    def read_shard(self, shard: ShardInfo) -> dict[str, np.ndarray]:
        """Every array of one published shard, read in full (used by verify)."""
        out = {}
        for name in (ACTS, *META_DTYPES):
            lo = shard.slot * self.shard_rows
            try:
                out[name] = self._arrays[name][lo : lo + shard.rows].read().result()
            except (ValueError, KeyError) as e:
                raise self._corrupt(shard, name, e) from e
        return out

    def __repr__(self) -> str:
        return (f"ActivationStore({self.path!r}, n_rows={self.n_rows}, d_in={self.d_in}, "
                f"dtype={self.dtype!r}, shards={len(self.shards)})")


def open_store(path: Any) -> ActivationStore:
    """Open the store at `path` (local path or TensorStore URL such as gs://bucket/dir)."""
    if isinstance(path, ActivationStore):
        return path
    path = str(path)
    header = read_json(join(path, HEADER_NAME))
    if header is None:
        raise StoreNotFoundError(f"no activation store at {path} (missing {HEADER_NAME})")
    return ActivationStore(path, check_header(header, path), read_parts(path))
