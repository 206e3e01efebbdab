"""Reconstruction metrics of an SAE over a whole evaluation set, on raw (unnormalised) activations.

The sums and the metrics' definitions (DESIGN §4) live in `jaxdict.sae.metric_sums`, shared with
the trainer's held-out evaluation; this accumulates them over batches on the host.
"""
from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdict.sae.inference import SAE
from jaxdict.sae.metric_sums import DENSE_FIRING_RATE, add_sums, metrics_from_sums, reconstruction_sums

__all__ = ["ActivationMetrics", "evaluate_activations", "DENSE_FIRING_RATE"]

_batch_sums = jax.jit(reconstruction_sums, static_argnames=("cfg", "mesh"))


class ActivationMetrics:
    """Accumulates the reconstruction metrics of `sae` over batches of raw activations [B, d] (a
    transcoder's rows [x | y]: input and target hook of the same token, sae/transcoder.py)."""

    def __init__(self, sae: SAE):
        self.sae = sae
        self.n = 0
        self.shift: np.ndarray | None = None
        self.totals: dict[str, np.ndarray] = {}

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        width = self.sae.cfg.batch_width
        if x.ndim != 2 or x.shape[1] != width:
            what = f"[B, d_in + d_out = {width}] (rows [x | y])" if self.sae.cfg.is_transcoder else f"[B, {width}]"
            raise ValueError(f"activations must be {what}, got shape {x.shape}")
        if len(x) == 0:
            return
        if self.shift is None:
            self.shift = np.mean(x.astype(np.float64), axis=0).astype(np.float32)
        sums = _batch_sums(self.sae.params, jnp.asarray(x), jnp.asarray(self.shift), cfg=self.sae.cfg, mesh=None)
        add_sums(self.totals, jax.device_get(sums))
        self.n += len(x)

    @property
    def fire_counts(self) -> np.ndarray:
        """int64 [F]: on how many evaluated tokens each latent fired."""
        counts = self.totals.get("fire_counts")
        return np.zeros(self.sae.n_features, np.int64) if counts is None else np.rint(counts).astype(np.int64)

    @property
    def density(self) -> np.ndarray:
        """float64 [F]: fraction of tokens on which each latent fired."""
        return self.fire_counts / max(self.n, 1)

    def result(self) -> dict[str, float]:
        # Dead over this evaluation set: never fired in its `n_tokens` tokens.
        return {**metrics_from_sums(self.totals, self.n), "n_tokens": self.n}


def evaluate_activations(sae: SAE, batches: Iterable[np.ndarray]) -> ActivationMetrics:
    acc = ActivationMetrics(sae)
    for x in batches:
        acc.update(x)
    return acc
