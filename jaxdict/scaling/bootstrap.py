"""Bootstrap confidence intervals: resample fitted points with replacement, refit, take percentiles."""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from jaxdict.scaling.errors import ScalingInputError

# Resamples are drawn until this many are usable; beyond it the points are too few to bootstrap.
_MAX_DRAWS_PER_RESAMPLE = 50


def draw_resamples(
    compute: np.ndarray, n_resamples: int, min_distinct: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Index sets of `n_resamples` bootstrap resamples of the points, each of the original size.

    A resample with fewer than `min_distinct` distinct compute values cannot identify the model's
    parameters; it is redrawn, and the number of redraws is returned so a report can state it.

    Args:
      compute: [n] compute of each point (only used to count distinct values).
    Returns:
      (int64 [n_resamples, n] indices, number of rejected draws).
    """
    compute = np.asarray(compute, dtype=np.float64)
    n = compute.size
    if n_resamples < 0:
        raise ScalingInputError(f"number of bootstrap resamples must be ≥ 0, got {n_resamples}")
    out = np.empty((n_resamples, n), dtype=np.int64)
    rejected = 0
    filled = 0
    while filled < n_resamples:
        if rejected > _MAX_DRAWS_PER_RESAMPLE * max(n_resamples, 1):
            raise ScalingInputError(
                f"bootstrap: after {rejected} draws, too few resamples of the {n} points have "
                f"{min_distinct} distinct compute values; the fit needs more frontier points"
            )
        idx = rng.integers(0, n, size=n)
        if np.unique(compute[idx]).size < min_distinct:
            rejected += 1
            continue
        out[filled] = idx
        filled += 1
    return out, rejected


def bootstrap_parameters(
    fit: Callable[[np.ndarray], Mapping[str, float]], resamples: np.ndarray
) -> dict[str, np.ndarray]:
    """Apply `fit(indices) -> {param: value}` to every resample: {param: float64 [n_resamples]}."""
    samples: dict[str, list[float]] = {}
    for idx in resamples:
        for key, value in fit(idx).items():
            samples.setdefault(key, []).append(float(value))
    return {k: np.asarray(v, dtype=np.float64) for k, v in samples.items()}


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Central percentile interval (2.5/97.5 for level 0.95) of the finite samples; None if none."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must lie in (0, 1), got {level}")
    finite = np.asarray(samples, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return None
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(finite, [tail, 100.0 - tail])
    return float(lo), float(hi)
