"""Step metrics with the names and definitions of DESIGN.md §4, computed on device.

They are fetched to the host only when logged. Batch-level caveats: in the train step `fvu` uses
the batch mean μ (the evaluator uses the whole evaluation set), `dense_frac` counts latents firing on
more than 10 % of the batch's tokens, and `dead_frac` uses the running tokens-since-fired counters
(dead = not fired for `dead_tokens` tokens).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdict.sae.config import SAEConfig
from jaxdict.sae.forward import ForwardOutput
from jaxdict.sae.metric_sums import DENSE_FIRING_RATE
from jaxdict.sae.transcoder import split_batch


def fvu(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """Σ‖x − x̂‖² / Σ‖x − μ‖², μ the mean over the given tokens."""
    x = x.astype(jnp.float32)
    residual = jnp.sum(jnp.square(x - x_hat))
    total = jnp.sum(jnp.square(x - jnp.mean(x, axis=0, keepdims=True)))
    return residual / jnp.maximum(total, 1e-30)


def step_metrics(
    x: jax.Array,
    out: ForwardOutput,
    parts: dict[str, jax.Array],
    loss: jax.Array,
    tokens_since_fired: jax.Array,
    cfg: SAEConfig,
) -> dict[str, jax.Array]:
    # fvu of what was reconstructed: the input of an SAE, the target of a transcoder.
    batch_fvu = fvu(split_batch(x, cfg)[1], out.x_hat)
    firing_rate = out.fire_counts / jnp.float32(x.shape[0])
    metrics = {
        "loss": loss,
        "fvu": batch_fvu,
        "explained_variance": 1.0 - batch_fvu,
        # Σ over latents of their firing counts = Σ over tokens of active latents: the mean l0
        # without a second pass over the [B, F] activations.
        "l0": jnp.sum(out.fire_counts) / jnp.float32(x.shape[0]),
        "dead_frac": jnp.mean((tokens_since_fired >= cfg.dead_tokens).astype(jnp.float32)),
        "dense_frac": jnp.mean((firing_rate > DENSE_FIRING_RATE).astype(jnp.float32)),
    }
    metrics.update(parts)
    return metrics
