"""The Grain pipeline of the loader: slabs of rows, shuffled globally, split per process, mixed locally.

    MapDataset.source(SlabSource)        record i = rows [i*slab_rows, (i+1)*slab_rows) of the source
      .shuffle(seed)                     global shuffle of slab order, a new permutation each epoch
      [: P * (S // P)][p :: P]           process p's equal share of each epoch's slabs
      .batch(window_slabs, concatenate)  a window of consecutive slabs (never across epochs) ...
      .repeat(num_epochs)                None = forever; grain reshuffles each epoch (seed + epoch)
      .random_map(permute rows)          ... whose rows are permuted together (local shuffle)
      .to_iter_dataset(ReadOptions)      prefetched by reader threads; checkpointable state

A record is a slab, not a row: per-record Python overhead would dominate at one row per record.
The S % P slabs left over in an epoch differ from epoch to epoch, because each epoch is shuffled
before the share is cut; every process sees exactly S // P slabs per epoch, so all processes make
the same number of batches. The tail of the source beyond S * slab_rows rows is never read.
"""
from __future__ import annotations

from typing import Any, Protocol

import grain
import numpy as np


class RowSource(Protocol):
    d_in: int
    n_rows: int

    def read(self, start: int, stop: int) -> np.ndarray: ...


class SlabSource:
    """grain RandomAccessDataSource: record i is slab i, [slab_rows, d_in] rows cast to `dtype`."""

    def __init__(self, source: RowSource, slab_rows: int, dtype: Any):
        self.source = source
        self.slab_rows = slab_rows
        self.dtype = np.dtype(dtype)
        self._len = source.n_rows // slab_rows

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self._len:
            raise IndexError(f"slab {index} is outside [0, {self._len})")
        lo = index * self.slab_rows
        return np.asarray(self.source.read(lo, lo + self.slab_rows)).astype(self.dtype, copy=False)

    def __repr__(self) -> str:
        return f"SlabSource({self.source!r}, slab_rows={self.slab_rows}, dtype={self.dtype.name})"


def derived_seed(*parts: int) -> int:
    """A 32-bit seed mixing `parts`, so that seeds s and s+1 do not share grain's per-epoch seeds
    (grain reshuffles epoch e with seed + e)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _shuffle_window_rows(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return window[rng.permutation(len(window))]


def window_dataset(
    slabs: SlabSource,
    *,
    seed: int,
    process_index: int,
    process_count: int,
    num_epochs: int | None,
    window_slabs: int,
) -> grain.MapDataset:
    """The MapDataset of windows ([window_slabs * slab_rows, d_in] arrays) for one process."""
    per_process = len(slabs) // process_count
    ds = grain.MapDataset.source(slabs).shuffle(seed=derived_seed(seed, 0))
    ds = ds[: per_process * process_count][process_index::process_count]
    ds = ds.batch(window_slabs, drop_remainder=False, batch_fn=np.concatenate)
    ds = ds.repeat(num_epochs)
    return ds.random_map(_shuffle_window_rows, seed=derived_seed(seed, 1, process_index))
