"""Rows from N row-aligned activation stores joined column-wise: the data of a cross-layer transcoder.

A CLT of L layers reads resid_mid.l and reconstructs mlp_out.l for every l, so each training row is
[resid_mid.0 … resid_mid.{L−1} | mlp_out.0 … mlp_out.{L−1}] of one token (jaxdict.clt.step's
layout). `jaxdict harvest --hook resid_mid.0 … --hook mlp_out.{L-1}` writes those 2L stores from
one forward pass. MultiStoreSource generalises PairedSource (two stores) to any number: every
store is checked against the first with the same alignment checks (row count, model, corpus,
context length, token_ids / doc_ids / positions of every row), and the loader — which only ever
sees rows — keeps its slab shuffle, per-process share and exact resume unchanged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxdict.data.paired import check_aligned
from jaxdict.data.sources import StoreSource
from jaxdict.store import open_store
from jaxdict.store.errors import StoreIncompatibleError


class MultiStoreSource:
    """Row-aligned stores as one loader source: read() gives [rows, Σ d_i], the stores' columns in
    the order given; `widths` records each store's d_in."""

    def __init__(self, stores: Sequence[Any], split: str = "all", eval_fraction: float = 0.01, check: bool = True):
        if len(stores) < 1:
            raise ValueError("MultiStoreSource needs at least one store")
        opened = [open_store(s) for s in stores]
        if check:
            for other in opened[1:]:
                check_aligned(opened[0], other)
        self.sources = [StoreSource(s, split=split, eval_fraction=eval_fraction) for s in opened]
        first = self.sources[0].runs
        for source in self.sources[1:]:
            if not (np.array_equal(first.starts, source.runs.starts) and np.array_equal(first.stops, source.runs.stops)):
                raise StoreIncompatibleError(f"the {split!r} split selects different rows of {opened[0].path} and "
                                             f"{source.store.path}")
        self.split = split
        self.widths: tuple[int, ...] = tuple(s.d_in for s in self.sources)
        self.d_in: int = sum(self.widths)
        self.dtype = np.result_type(*(s.dtype for s in self.sources))
        self.n_rows: int = self.sources[0].n_rows

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.concatenate([s.read(start, stop).astype(self.dtype, copy=False) for s in self.sources], axis=1)

    def __repr__(self) -> str:
        return f"MultiStoreSource({len(self.sources)} stores, split={self.split!r}, n_rows={self.n_rows})"


def clt_store_paths(root: str | Path, n_layers: int) -> list[Path]:
    """[root/resid_mid.0 … root/resid_mid.{L−1}, root/mlp_out.0 … root/mlp_out.{L−1}]: the stores
    of one harvest of all CLT hooks, in the column order jaxdict.clt.step.split_rows expects."""
    if not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be a positive int, got {n_layers!r}")
    root = Path(root)
    paths = [root / f"{hook}.{layer}" for hook in ("resid_mid", "mlp_out") for layer in range(n_layers)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{root} lacks the CLT stores {', '.join(missing)}; harvest them with "
                                f"jaxdict harvest --hook resid_mid.L --hook mlp_out.L for L in 0..{n_layers - 1}")
    return paths
