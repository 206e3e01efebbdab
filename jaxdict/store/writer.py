"""StoreWriter: appends activation rows in shard-aligned blocks, publishes complete shards, resumes.

Exactly-once resume. The producer (e.g. the harvester) passes a `user_state` with an append: its
own position *after* that append. The writer's manifest part records the last such state whose rows
are all in published shards (`resume_state`) and the writer's row count at that point
(`resume_rows`), next to the rows actually published (`rows_published` >= `resume_rows`, because a
shard usually ends in the middle of an append). After a crash the producer restarts from
`resume_state` and appends the same rows again; the writer silently drops the first
`rows_published - resume_rows` of them, which it already holds, and buffers the rest. Rows that were
only buffered when the process died were never published, so they are simply produced again.
"""
from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import tensorstore as ts

from jaxdict.store.blobs import CONTEXT, create_json_exclusive, join, read_json, write_json_atomic
from jaxdict.store.errors import StoreError, StoreIncompatibleError
from jaxdict.store.layout import (
    ACTS,
    HEADER_NAME,
    META_DTYPES,
    array_spec,
    check_dtype,
    check_header,
    default_shard_rows,
    make_header,
    numpy_dtype,
)
from jaxdict.store.manifest import empty_part, part_path, shard_checksum, shard_stats


def _as_int_array(name: str, a: Any, dtype: np.dtype, n: int) -> np.ndarray:
    a = np.asarray(a)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match acts, got {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be an integer array, got dtype {a.dtype}")
    if not np.can_cast(a.dtype, dtype, casting="safe"):
        info = np.iinfo(dtype)
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise ValueError(f"{name} values must fit {dtype.name}, got range [{a.min()}, {a.max()}]")
    return a.astype(dtype, copy=False)


class StoreWriter:
    """Writes one writer's slots of an activation store. Use `StoreWriter.open(...)`."""

    def __init__(self, path: str, header: dict, part: dict, writer_index: int):
        self.path = path
        self.header = header
        self.d_in: int = header["d_in"]
        self.dtype: str = header["dtype"]
        self.shard_rows: int = header["shard_rows"]
        self.writer_index = writer_index
        self.num_writers: int = header["num_writers"]
        self._np_dtype = numpy_dtype(self.dtype)
        self._part = part
        self._arrays = {
            name: ts.open(array_spec(path, name, header, create=True), context=CONTEXT).result()
            for name in (ACTS, *META_DTYPES)
        }
        # Rows of upcoming appends that are already published (see module docstring).
        self._skip = part["rows_published"] - part["resume_rows"]
        self._stream_rows = part["resume_rows"]  # writer rows seen so far, dropped ones included
        self._pending_states: list[tuple[int, Any]] = []  # (stream rows after append, user_state)
        self._buffer: list[tuple[np.ndarray, ...]] = []
        self._buffered = 0
        self._closed = False

    @classmethod
    def open(
        cls,
        path: str,
        d_in: int,
        dtype: str = "float32",
        metadata: dict | None = None,
        shard_rows: int | None = None,
        writer_index: int = 0,
        num_writers: int = 1,
    ) -> "StoreWriter":
        """Create the store at `path` if absent, else re-open it, validating d_in/dtype/metadata.

        metadata: free JSON (model, hook, ...) fixed at creation; re-opening with a different dict
        is refused, re-opening with None accepts the stored one.
        """
        if not isinstance(d_in, (int, np.integer)) or d_in <= 0:
            raise ValueError(f"d_in must be a positive int, got {d_in!r}")
        check_dtype(dtype)
        if not isinstance(num_writers, int) or num_writers < 1:
            raise ValueError(f"num_writers must be an int >= 1, got {num_writers!r}")
        if not isinstance(writer_index, int) or not 0 <= writer_index < num_writers:
            raise ValueError(f"writer_index must be in [0, {num_writers}), got {writer_index!r}")
        if shard_rows is not None and (not isinstance(shard_rows, int) or shard_rows < 1):
            raise ValueError(f"shard_rows must be a positive int or None, got {shard_rows!r}")
        header_path = join(path, HEADER_NAME)
        wanted = make_header(
            int(d_in), dtype, shard_rows or default_shard_rows(int(d_in), dtype), num_writers,
            dict(metadata or {}),
        )
        if not create_json_exclusive(header_path, wanted):
            header = check_header(read_json(header_path), path)
            checks = [("d_in", int(d_in)), ("dtype", dtype), ("num_writers", num_writers)]
            if shard_rows is not None:
                checks.append(("shard_rows", shard_rows))
            if metadata is not None:
                checks.append(("metadata", dict(metadata)))
            for key, value in checks:
                if header[key] != value:
                    raise StoreIncompatibleError(
                        f"store {path} has {key}={header[key]!r} but the writer was opened with "
                        f"{key}={value!r}"
                    )
        else:
            header = wanted
        part = read_json(part_path(path, writer_index))
        if part is None:
            part = empty_part(writer_index, num_writers, header["d_in"])
        return cls(path, header, part, writer_index)

    @property
    def resume_state(self) -> Any:
        """The user_state of the last append whose rows are all durably published (None if none)."""
        return copy.deepcopy(self._part["resume_state"])

    @property
    def rows_published(self) -> int:
        return self._part["rows_published"]

    def append(self, acts: np.ndarray, token_ids: np.ndarray, doc_ids: np.ndarray,
               positions: np.ndarray, user_state: dict | None = None) -> None:
        """Buffer rows; every full shard is written and then published in the manifest.

        acts [n, d_in] (any float dtype, stored as the store dtype); token_ids [n] int32;
        doc_ids [n] int64; positions [n] int32. user_state: the producer's position after these
        rows (JSON-serialisable), returned as `resume_state` once they are durable.
        """
        if self._closed:
            raise StoreError(f"writer {self.writer_index} of store {self.path} is closed")
        acts = np.asarray(acts)
        if acts.ndim != 2 or acts.shape[1] != self.d_in:
            raise ValueError(f"acts must have shape [n, {self.d_in}], got {acts.shape}")
        if not np.issubdtype(acts.dtype, np.floating) and acts.dtype != self._np_dtype:
            raise ValueError(f"acts must be a float array, got dtype {acts.dtype}")
        if user_state is not None:
            try:
                json.dumps(user_state)
            except TypeError as e:
                raise ValueError(f"user_state must be JSON-serialisable: {e}") from e
        n = acts.shape[0]
        cols = (
            acts.astype(self._np_dtype, copy=False),
            _as_int_array("token_ids", token_ids, META_DTYPES["token_ids"], n),
            _as_int_array("doc_ids", doc_ids, META_DTYPES["doc_ids"], n),
            _as_int_array("positions", positions, META_DTYPES["positions"], n),
        )
        self._stream_rows += n
        drop = min(self._skip, n)
        self._skip -= drop
        if drop < n:
            self._buffer.append(tuple(c[drop:] for c in cols))
            self._buffered += n - drop
        if user_state is not None:
            self._pending_states.append((self._stream_rows, copy.deepcopy(user_state)))
        while self._buffered >= self.shard_rows:
            self._write_shard(self._take(self.shard_rows))

    def close(self) -> None:
        """Write and publish the last, partial shard (if any) and record the final resume state."""
        if self._closed:
            return
        if self._buffered:
            self._write_shard(self._take(self._buffered))
        else:
            self._promote_states()
            write_json_atomic(part_path(self.path, self.writer_index), self._part)
        self._closed = True

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an exception keep only what was published: the buffer may hold a torn batch.
        if exc_type is None:
            self.close()
        else:
            self._closed = True

    def _take(self, n: int) -> tuple[np.ndarray, ...]:
        cols = [np.concatenate([b[i] for b in self._buffer]) for i in range(4)]
        rest = tuple(c[n:] for c in cols)
        self._buffer = [rest] if len(rest[0]) else []
        self._buffered -= n
        return tuple(c[:n] for c in cols)

    def _promote_states(self) -> None:
        # Stream rows [0, rows_published) are durable, whether published in this session or
        # before a crash (the rows being skipped now); a state at or before that point is durable.
        durable_upto = self._part["rows_published"]
        keep = []
        for rows_after, state in self._pending_states:
            if rows_after <= durable_upto:
                self._part["resume_state"], self._part["resume_rows"] = state, rows_after
            else:
                keep.append((rows_after, state))
        self._pending_states = keep

    def _write_shard(self, cols: tuple[np.ndarray, ...]) -> None:
        acts = cols[0]
        bad = ~np.isfinite(acts.astype(np.float32)).all(axis=1)
        if bad.any():
            raise StoreError(
                f"{int(bad.sum())} of {len(acts)} rows to store have non-finite activations "
                f"(first at buffered row {int(np.argmax(bad))}); refusing to write NaN/inf"
            )
        slot = self.writer_index + self.num_writers * len(self._part["shards"])
        lo = slot * self.shard_rows
        futures = []
        for name, col in zip((ACTS, *META_DTYPES), cols):
            futures.append(self._arrays[name][lo : lo + len(col)].write(col))
        for f in futures:
            f.result()
        total, sq = shard_stats(acts)
        part = self._part
        part["shards"].append({
            "slot": slot,
            "rows": len(acts),
            "crc32": shard_checksum(*cols),
            "sum_sq_norm": sq,
        })
        part["rows_published"] += len(acts)
        stats = part["stats"]
        stats["count"] += len(acts)
        stats["sum"] = (np.asarray(stats["sum"], np.float64) + total).tolist()
        stats["sum_sq_norm"] += sq
        self._promote_states()
        write_json_atomic(part_path(self.path, self.writer_index), part)
