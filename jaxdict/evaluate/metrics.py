"""Reconstruction metrics of an SAE over a whole evaluation set (DESIGN §4 names and definitions).

Sums are taken per batch on device and accumulated on the host in float64, so every metric is
exact over the whole set whatever the batch size: `fvu` divides by Σ‖x − μ‖² with μ the mean of
the *whole* set (unlike the train step's batch mean), on raw (unnormalised) activations.
"""
from __future__ import annotations

import functools
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdict.sae.config import SAEConfig
from jaxdict.sae.forward import dense_latents, forward
from jaxdict.sae.inference import SAE
from jaxdict.sae.params import SAEParams

# "dense" latents fire on more than 10 % of tokens (DESIGN §4).
DENSE_FIRING_RATE = 0.1


@functools.partial(jax.jit, static_argnames=("cfg",))
def _batch_sums(params: SAEParams, x: jax.Array, shift: jax.Array, cfg: SAEConfig):
    x = x.astype(jnp.float32)
    out = forward(params, x, cfg, None, train=False)
    f = dense_latents(out, cfg.n_features)
    centred = x - shift  # shifted sums avoid cancellation in Σ‖x‖² − n‖μ‖²
    return {
        "resid_sq": jnp.sum(jnp.square(x - out.x_hat)),
        "sum_centred": jnp.sum(centred, axis=0),
        "sq_centred": jnp.sum(jnp.square(centred)),
        "l0": jnp.sum(out.l0),
        "fire_counts": jnp.sum(f > 0, axis=0, dtype=jnp.int32),
        "max_act": jnp.max(f, axis=0),
    }


class ActivationMetrics:
    """Accumulates the reconstruction metrics of `sae` over batches of raw activations [B, d]."""

    def __init__(self, sae: SAE):
        self.sae = sae
        F, d = sae.n_features, sae.d_in
        self.n = 0
        self.shift: np.ndarray | None = None
        self.resid_sq = 0.0
        self.sum_centred = np.zeros(d, np.float64)
        self.sq_centred = 0.0
        self.l0_sum = 0.0
        self.fire_counts = np.zeros(F, np.int64)
        self.max_act = np.zeros(F, np.float32)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.sae.d_in:
            raise ValueError(f"activations must be [B, {self.sae.d_in}], got shape {x.shape}")
        if len(x) == 0:
            return
        if self.shift is None:
            self.shift = np.mean(x.astype(np.float64), axis=0).astype(np.float32)
        s = jax.device_get(_batch_sums(self.sae.params, jnp.asarray(x), jnp.asarray(self.shift), self.sae.cfg))
        self.n += len(x)
        self.resid_sq += float(s["resid_sq"])
        self.sum_centred += np.asarray(s["sum_centred"], np.float64)
        self.sq_centred += float(s["sq_centred"])
        self.l0_sum += float(s["l0"])
        self.fire_counts += np.asarray(s["fire_counts"], np.int64)
        self.max_act = np.maximum(self.max_act, np.asarray(s["max_act"], np.float32))

    @property
    def density(self) -> np.ndarray:
        """float64 [F]: fraction of tokens on which each latent fired."""
        return self.fire_counts / max(self.n, 1)

    def result(self) -> dict[str, float]:
        if self.n == 0:
            raise ValueError("no activations were evaluated (empty evaluation set)")
        # Σ‖x − μ‖² = Σ‖x − c‖² − n‖μ − c‖² for the shift c.
        total = self.sq_centred - float(np.sum(np.square(self.sum_centred))) / self.n
        fvu = self.resid_sq / max(total, 1e-30)
        density = self.density
        return {
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "mse": self.resid_sq / (self.n * self.sae.d_in),
            "l0": self.l0_sum / self.n,
            # Dead over this evaluation set: never fired in its `n_tokens` tokens.
            "dead_frac": float(np.mean(self.fire_counts == 0)),
            "dense_frac": float(np.mean(density > DENSE_FIRING_RATE)),
            "n_tokens": self.n,
        }


def evaluate_activations(sae: SAE, batches: Iterable[np.ndarray]) -> ActivationMetrics:
    acc = ActivationMetrics(sae)
    for x in batches:
        acc.update(x)
    return acc
