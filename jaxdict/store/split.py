"""Held-out split by document (grain-free: the loader and the evaluator both use it).

A document goes to the eval split when a hash of its id, read as a number in [0, 1), is below
`eval_fraction`. The hash (splitmix64, Steele et al. 2014) depends only on the id, so the split is the
same on every machine, for every store holding that document, whatever the row order.
"""
from __future__ import annotations

import numpy as np

SPLITS = ("train", "eval", "all")


def check_split(split: str, eval_fraction: float) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1], got {eval_fraction!r}")


def doc_unit_hash(doc_ids: np.ndarray) -> np.ndarray:
    """splitmix64 of each doc id, as float64 in [0, 1) (top 53 bits)."""
    z = np.asarray(doc_ids).astype(np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def mask_runs(mask: np.ndarray, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(starts, stops) int64 of the maximal runs of True in `mask`, shifted by `offset`."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1).astype(np.int64) + offset
    stops = np.flatnonzero(edges == -1).astype(np.int64) + offset
    return starts, stops


def split_mask(doc_ids: np.ndarray, split: str, eval_fraction: float) -> np.ndarray:
    """bool [n]: which rows belong to `split`."""
    check_split(split, eval_fraction)
    if split == "all":
        return np.ones(len(doc_ids), bool)
    in_eval = doc_unit_hash(doc_ids) < eval_fraction
    return in_eval if split == "eval" else ~in_eval
