"""The compute-optimal frontier: the lower envelope of loss against training compute."""
from __future__ import annotations

import numpy as np


def compute_optimal_frontier(compute: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the frontier runs, sorted by increasing compute.

    A run is on the frontier when no run with less or equal compute has a strictly lower loss
    (so of two runs with equal compute only the lower-loss one stays; exact ties all stay).

    Args:
      compute: [n] positive, finite training compute of each run.
      loss: [n] finite loss of each run.
    Returns:
      int64 [m] indices into the inputs, m ≥ 1 for n ≥ 1, ordered by (compute, loss).
    """
    compute = np.asarray(compute, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    if compute.shape != loss.shape or compute.ndim != 1:
        raise ValueError(f"compute and loss must be 1-D of one length, got {compute.shape} and {loss.shape}")
    if not (np.all(np.isfinite(compute)) and np.all(np.isfinite(loss))):
        raise ValueError("compute and loss must be finite; exclude non-finite runs before the frontier")
    order = np.lexsort((loss, compute))  # by compute, then loss
    on_frontier = []
    for i in order:
        # Runs with compute ≤ compute[i]: every earlier run in the order plus equal-compute later ones.
        no_more = compute <= compute[i]
        if not np.any(loss[no_more] < loss[i]):
            on_frontier.append(i)
    return np.asarray(on_frontier, dtype=np.int64)
