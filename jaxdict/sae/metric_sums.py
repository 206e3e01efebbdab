"""Reconstruction metrics over a whole evaluation set, as sums (DESIGN.md §4 names and definitions).

The trainer's periodic held-out evaluation and `jaxdict eval` both use these: the device returns
sums per batch and the host adds them in float64, so every metric is exact over the whole set
whatever the batch size. `fvu` divides by Σ‖x − μ‖² with μ the mean of the *whole* set (the train
step uses the batch mean); the sums are shifted by a fixed vector c (the first batch's mean) to
avoid cancellation in Σ‖x‖² − n‖μ‖².
"""
from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxdict.sae.config import SAEConfig
from jaxdict.sae.forward import forward
from jaxdict.sae.matryoshka import prefix_active_counts
from jaxdict.sae.params import SAEParams
from jaxdict.sae.transcoder import split_batch

# "dense" latents fire on more than 10 % of tokens (DESIGN.md §4).
DENSE_FIRING_RATE = 0.1


def reconstruction_sums(params: SAEParams, x: jax.Array, shift: jax.Array, cfg: SAEConfig,
                        mesh: Mesh | None) -> dict[str, jax.Array]:
    """Per-batch sums of the inference forward pass on x [B, d] (in the units `params` take). For a
    transcoder x is [B, d_in + d_out] rows [x | y] and `shift` [d_in + d_out]; the sums are of the
    target y (fvu of the MLP output, not of its input)."""
    x_in, x = split_batch(x.astype(jnp.float32), cfg)
    _, shift = split_batch(shift, cfg)
    out = forward(params, x_in, cfg, mesh, train=False)
    centred = x - shift
    sums = {
        "resid_sq": jnp.sum(jnp.square(x - out.x_hat)),
        "sum_centred": jnp.sum(centred, axis=0),
        "sq_centred": jnp.sum(jnp.square(centred)),
        "l0_sum": jnp.sum(out.l0),
        "fire_counts": out.fire_counts,
    }
    if out.prefix_x_hat is not None:
        sums.update(_prefix_sums(x, out, cfg))
    return sums


def _prefix_sums(x: jax.Array, out, cfg: SAEConfig) -> dict[str, jax.Array]:
    """A Matryoshka SAE's inner prefixes as SAEs of their own: the squared residual and the active
    count of the latents below each prefix m (`resid_sq_prefix_<m>`, `l0_sum_prefix_<m>`)."""
    active = out.latents > 0 if out.latents is not None else out.top_values > 0
    counts = prefix_active_counts(active, None if out.latents is not None else out.top_indices,
                                  cfg.matryoshka_prefixes)
    sums = {}
    for i, m in enumerate(cfg.matryoshka_prefixes[:-1]):
        sums[f"resid_sq_prefix_{m}"] = jnp.sum(jnp.square(x - out.prefix_x_hat[i]))
        sums[f"l0_sum_prefix_{m}"] = jnp.sum(counts[i])
    return sums


def add_sums(totals: dict[str, np.ndarray], sums: Mapping[str, np.ndarray]) -> None:
    """totals += sums, in float64 on the host."""
    for key, value in sums.items():
        totals[key] = totals.get(key, 0.0) + np.asarray(value, np.float64)


def metrics_from_sums(totals: Mapping[str, np.ndarray], n: int) -> dict[str, float]:
    """fvu, explained_variance, mse, l0, dead_frac and dense_frac over the `n` rows summed.

    dead_frac here is the fraction of latents that never fired on these rows (the train step's
    dead_frac uses its running tokens-since-fired counters instead)."""
    if n <= 0:
        raise ValueError("no activations were evaluated (empty evaluation set)")
    sum_centred = np.asarray(totals["sum_centred"], np.float64)
    # Σ‖x − μ‖² = Σ‖x − c‖² − n‖μ − c‖² for the shift c.
    total_var = float(totals["sq_centred"]) - float(sum_centred @ sum_centred) / n
    resid_sq = float(totals["resid_sq"])
    fvu = resid_sq / total_var if total_var > 0 else math.nan  # a constant set has no variance
    counts = np.asarray(totals["fire_counts"], np.float64)
    metrics = {
        "fvu": fvu,
        "explained_variance": 1.0 - fvu,
        "mse": resid_sq / (n * len(sum_centred)),
        "l0": float(totals["l0_sum"]) / n,
        "dead_frac": float(np.mean(counts == 0)),
        "dense_frac": float(np.mean(counts / n > DENSE_FIRING_RATE)),
    }
    # A Matryoshka SAE's inner prefixes (reconstruction_sums): fvu_prefix_<m>, l0_prefix_<m>.
    for key in sorted((k for k in totals if k.startswith("resid_sq_prefix_")), key=lambda k: int(k.rsplit("_", 1)[1])):
        m = key.rsplit("_", 1)[1]
        prefix_resid = float(totals[key])
        metrics[f"fvu_prefix_{m}"] = prefix_resid / total_var if total_var > 0 else math.nan
        metrics[f"l0_prefix_{m}"] = float(totals[f"l0_sum_prefix_{m}"]) / n
    return metrics
