"""Row sources for the loader: an activation store or an in-memory numpy array, one interface.

A source is a dense range of rows [0, n_rows) of one split (train / eval / all); `read(start, stop)`
returns [stop - start, d_in] activations in the source's dtype.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from jaxdict.data.split import RowRuns, check_split, mask_runs, split_mask
from jaxdict.store import ActivationStore, open_store


class ArraySource:
    """An in-memory [N, d_in] array as a loader source.

    doc_ids [N] (int): the document of each row, for the held-out split; None treats every row as
    its own document.
    """

    def __init__(self, array: np.ndarray, doc_ids: np.ndarray | None = None, split: str = "all",
                 eval_fraction: float = 0.01):
        check_split(split, eval_fraction)
        array = np.asarray(array)
        if array.ndim != 2:
            raise ValueError(f"array must be [N, d_in], got shape {array.shape}")
        if doc_ids is None:
            doc_ids = np.arange(len(array), dtype=np.int64)
        doc_ids = np.asarray(doc_ids)
        if doc_ids.shape != (len(array),) or not np.issubdtype(doc_ids.dtype, np.integer):
            raise ValueError(
                f"doc_ids must be an integer array of shape ({len(array)},), got "
                f"{doc_ids.dtype} {doc_ids.shape}"
            )
        self.array = array
        self.split = split
        self.eval_fraction = eval_fraction
        self.runs = RowRuns(*mask_runs(split_mask(doc_ids, split, eval_fraction)))
        self.d_in: int = array.shape[1]
        self.dtype = array.dtype
        self.n_rows: int = self.runs.n_rows

    def read(self, start: int, stop: int) -> np.ndarray:
        parts = [self.array[a:b] for a, b in self.runs.ranges(start, stop)]
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else self.array[:0]

    def __repr__(self) -> str:
        return (f"ArraySource(shape={self.array.shape}, dtype={self.dtype}, split={self.split!r}, "
                f"n_rows={self.n_rows})")


class StoreSource:
    """An activation store (or its path) as a loader source; only published rows are seen.

    For the train/eval splits the store's doc_ids are read once, shard by shard, and kept as runs
    of consecutive rows (a few per document), not as a per-row index.
    """

    def __init__(self, store_or_path: Any, split: str = "all", eval_fraction: float = 0.01):
        check_split(split, eval_fraction)
        self.store: ActivationStore = open_store(store_or_path)
        self.split = split
        self.eval_fraction = eval_fraction
        if split == "all":
            self.runs = RowRuns(np.array([0]), np.array([self.store.n_rows]))
        else:
            starts, stops = [], []
            for s in self.store.shards:
                doc_ids = self.store.read_column("doc_ids", s.start, s.start + s.rows)
                a, b = mask_runs(split_mask(doc_ids, split, eval_fraction), offset=s.start)
                starts.append(a)
                stops.append(b)
            starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
            stops = np.concatenate(stops) if stops else np.zeros(0, np.int64)
            # merge runs that continue across a shard boundary
            if len(starts) > 1:
                join = np.flatnonzero(starts[1:] == stops[:-1])
                starts = np.delete(starts, join + 1)
                stops = np.delete(stops, join)
            self.runs = RowRuns(starts, stops)
        self.d_in: int = self.store.d_in
        self.dtype = self.store.read(0, 0).dtype
        self.n_rows: int = self.runs.n_rows

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.store.read_ranges(self.runs.ranges(start, stop))

    def __repr__(self) -> str:
        return f"StoreSource({self.store.path!r}, split={self.split!r}, n_rows={self.n_rows})"
