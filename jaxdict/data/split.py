"""The row runs a held-out split selects, addressed by a dense index, for the loader's sources.

The split itself (by a hash of the document id) and its runs of rows live in `jaxdict.store.split`,
which imports no grain, so the evaluator shares the same definitions (DESIGN §2).
"""
from __future__ import annotations

import numpy as np

from jaxdict.store.split import SPLITS, check_split, doc_unit_hash, mask_runs, split_mask

__all__ = ["SPLITS", "check_split", "doc_unit_hash", "split_mask", "mask_runs", "RowRuns"]


class RowRuns:
    """A split as a sorted list of [start, stop) row runs, addressed by a dense split index."""

    def __init__(self, starts: np.ndarray, stops: np.ndarray):
        self.starts = np.asarray(starts, np.int64)
        self.stops = np.asarray(stops, np.int64)
        self.cum = np.concatenate([[0], np.cumsum(self.stops - self.starts)]).astype(np.int64)
        self.n_rows = int(self.cum[-1])

    def ranges(self, start: int, stop: int) -> list[tuple[int, int]]:
        """Underlying row ranges holding split rows [start, stop), in order."""
        if not 0 <= start <= stop <= self.n_rows:
            raise IndexError(f"rows [{start}, {stop}) are outside the split's [0, {self.n_rows})")
        out = []
        k = int(np.searchsorted(self.cum, start, side="right")) - 1
        while start < stop:
            lo = int(self.starts[k] + (start - self.cum[k]))
            take = min(stop - start, int(self.cum[k + 1] - start))
            out.append((lo, lo + take))
            start += take
            k += 1
        return out
