"""(input, target) training pairs from two row-aligned activation stores, for transcoders.

A transcoder reads one hook (e.g. `mlp_in.9`) and reconstructs another (`mlp_out.9`) of the same
token. `jaxdict harvest --hook mlp_in.9 --hook mlp_out.9` writes one store per hook from one forward
pass, row i of each from the same token. PairedSource joins such stores column-wise: row i is
[input_i, target_i], width d_input + d_target. Every guarantee of the loader (slab shuffle, the
per-process share, exact resume) then holds for pairs unchanged, because the loader only ever
sees rows; the train step splits the columns back (`split_pair`).

Alignment is checked, not assumed: the same row count, the same model and corpus, and equal
token_ids, doc_ids and positions on every row. Stores of two different harvests (another corpus
order, another context length, a resumed harvest that wrote rows in another order) fail here with
the first row that differs, instead of training a transcoder on mismatched tokens.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from jaxdict.data.sources import StoreSource
from jaxdict.store import ActivationStore, open_store
from jaxdict.store.errors import StoreIncompatibleError

# Metadata that must agree between the two stores (the hook differs by design).
_SAME_METADATA = ("model", "corpus", "context_length")
# Rows compared per read while checking token alignment: 1M rows of the three columns is ~16 MB.
_ALIGN_CHUNK_ROWS = 1 << 20


def check_aligned(inputs: ActivationStore, targets: ActivationStore) -> None:
    """Raise StoreIncompatibleError naming the first difference unless row i of both stores comes
    from the same token of the same document for every i."""
    if inputs.n_rows != targets.n_rows:
        raise StoreIncompatibleError(
            f"stores are not row-aligned: {inputs.path} has {inputs.n_rows} rows, {targets.path} has "
            f"{targets.n_rows}; harvest both hooks in one run (jaxdict harvest --hook A --hook B)")
    a_meta, b_meta = inputs.metadata, targets.metadata
    for key in _SAME_METADATA:
        if a_meta.get(key) != b_meta.get(key):
            raise StoreIncompatibleError(
                f"stores are not row-aligned: {key} is {a_meta.get(key)!r} in {inputs.path} but "
                f"{b_meta.get(key)!r} in {targets.path}")
    for start in range(0, inputs.n_rows, _ALIGN_CHUNK_ROWS):
        stop = min(start + _ALIGN_CHUNK_ROWS, inputs.n_rows)
        a, b = inputs.read_meta(start, stop), targets.read_meta(start, stop)
        for column in ("token_ids", "doc_ids", "positions"):
            differ = np.flatnonzero(a[column] != b[column])
            if differ.size:
                row = start + int(differ[0])
                raise StoreIncompatibleError(
                    f"stores are not row-aligned: row {row} has {column} {a[column][differ[0]]} in "
                    f"{inputs.path} but {b[column][differ[0]]} in {targets.path} "
                    f"({differ.size} of rows {start}..{stop} differ)")


class PairedSource:
    """Two row-aligned stores as one loader source: read() gives [rows, d_input + d_target].

    Both sides use the same split of documents (the split hashes doc_ids, which are equal row by
    row once check_aligned passes), so their row runs are identical."""

    def __init__(self, inputs: Any, targets: Any, split: str = "all", eval_fraction: float = 0.01,
                 check: bool = True):
        input_store, target_store = open_store(inputs), open_store(targets)
        if check:
            check_aligned(input_store, target_store)
        self.inputs = StoreSource(input_store, split=split, eval_fraction=eval_fraction)
        self.targets = StoreSource(target_store, split=split, eval_fraction=eval_fraction)
        if not (np.array_equal(self.inputs.runs.starts, self.targets.runs.starts)
                and np.array_equal(self.inputs.runs.stops, self.targets.runs.stops)):
            raise StoreIncompatibleError(f"the {split!r} split selects different rows of {input_store.path} and "
                                         f"{target_store.path}")
        self.split = split
        self.d_input: int = self.inputs.d_in
        self.d_target: int = self.targets.d_in
        self.d_in: int = self.d_input + self.d_target
        self.dtype = np.result_type(self.inputs.dtype, self.targets.dtype)
        self.n_rows: int = self.inputs.n_rows

    def read(self, start: int, stop: int) -> np.ndarray:
        x, y = self.inputs.read(start, stop), self.targets.read(start, stop)
        return np.concatenate([x.astype(self.dtype, copy=False), y.astype(self.dtype, copy=False)], axis=1)

    def __repr__(self) -> str:
        return (f"PairedSource({self.inputs.store.path!r} -> {self.targets.store.path!r}, split={self.split!r}, "
                f"n_rows={self.n_rows})")


def split_pair(batch: Any, d_input: int) -> tuple[Any, Any]:
    """(inputs [B, d_input], targets [B, d_target]) of a paired batch [B, d_input + d_target]."""
    return batch[:, :d_input], batch[:, d_input:]
