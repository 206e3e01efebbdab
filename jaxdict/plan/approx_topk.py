"""`lax.approx_max_k` as TPU runs it, emulated exactly enough to measure its recall on a CPU.

On TPU, `approx_max_k(x, k, recall_target=r)` (Chern et al. 2022, "TPU-KNN: K Nearest Neighbor
Search at Peak FLOP/s") views each row of n values as 128-lane tiles, keeps the maximum of each
bin of 2^L tiles lane-wise ("PartialReduce", one pass over the row at HBM speed), then takes the
exact top-k of the n / 2^L survivors. L comes from xla/hlo/builder/lib/approx_topk_shape.cc: the
bin count M is chosen so that the chance that two of the true top-k share a bin is small,
recall ≈ exp((1 − k) / M), i.e. M = (1 − k) / ln(r), at least one 128-lane tile.
On CPU and GPU the same call falls back to the exact top-k (so its recall there is 1): this module
reproduces the TPU binning to measure the recall a TPU run would get, on real pre-activations.
"""
from __future__ import annotations

import math

import numpy as np

_LANES = 128  # kTpuLaneTiling: rank >= 2 operands


def reduction_output_size(n: int, k: int, recall_target: float) -> tuple[int, int]:
    """(survivors per row, log2 of the reduction) as XLA computes them for a rank-2 operand."""
    if recall_target >= 1.0 or n <= _LANES:
        return n, 0
    m = min(max(int((1.0 - k) / math.log(recall_target)), _LANES), n)
    log2_reduction = int(math.floor(math.log2(n // m))) if n // m > 0 else 0
    if log2_reduction == 0:
        return n, 0
    log2_reduction = min(log2_reduction, math.ceil(math.log2(max(n // _LANES, 1))))
    tiles = -(-n // _LANES)
    return -(-tiles // (1 << log2_reduction)) * _LANES, log2_reduction


def approx_topk_indices(x: np.ndarray, k: int, recall_target: float) -> np.ndarray:
    """Indices [rows, k] that TPU's approx_max_k returns (up to ties): lane-wise bin maxima over
    groups of 2^L consecutive 128-wide tiles, then the exact top-k of the bin winners."""
    rows, n = x.shape
    out_size, log2_red = reduction_output_size(n, k, recall_target)
    if log2_red == 0:
        return np.argsort(-x, axis=1)[:, :k]
    group = 1 << log2_red
    tiles = -(-n // _LANES)
    padded_tiles = -(-tiles // group) * group
    pad = padded_tiles * _LANES - n
    xp = np.pad(x, ((0, 0), (0, pad)), constant_values=-np.inf)
    # [rows, out_tiles, group, lanes]: PartialReduce reduces 2^L adjacent tiles per lane.
    view = xp.reshape(rows, padded_tiles // group, group, _LANES)
    arg = view.argmax(axis=2)  # [rows, out_tiles, lanes]
    winners = view.max(axis=2).reshape(rows, -1)
    tile_idx = (np.arange(padded_tiles // group)[None, :, None] * group + arg) * _LANES + np.arange(_LANES)
    tile_idx = tile_idx.reshape(rows, -1)
    top = np.argsort(-winners, axis=1)[:, :k]
    return np.take_along_axis(tile_idx, top, axis=1)


def recall(x: np.ndarray, k: int, recall_target: float) -> float:
    """Mean fraction of each row's exact top-k that the TPU approximation returns."""
    exact = np.argpartition(-x, k - 1, axis=1)[:, :k]
    approx = approx_topk_indices(x, k, recall_target)
    hits = [len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(exact, approx)]
    return float(np.mean(hits)) / k
