"""Transcoder batches: a row is [x | y], the encoder's input x (d_in) beside the target y (d_out).

A transcoder (Dunefsky et al. 2024) reads one hook and reconstructs another of the same token, e.g.
`mlp_in.L` → `mlp_out.L`; jaxdict.data.PairedSource serves the two stores as one row. Every
function that takes a training or evaluation batch splits it here, so an SAE (target = input) and
a transcoder share the loss, the metrics, the step and the held-out evaluation.

The two sides are normalised separately (DESIGN.md §4: E‖s·x‖² = width for each side): a
transcoder's `input_scale` is the pair (s_in, s_out); an SAE's is one scalar.
"""
from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxdict.sae.config import SAEConfig


def split_batch(rows: Float[Array, "B W"], cfg: SAEConfig) -> tuple[Float[Array, "B d_in"], Float[Array, "B d_out"]]:
    """(encoder input, reconstruction target) of a batch: (x, x) for an SAE, the two column blocks of
    [x | y] for a transcoder."""
    if not cfg.is_transcoder:
        return rows, rows
    return rows[..., :cfg.d_in], rows[..., cfg.d_in:]


def unit_input_scale(cfg: SAEConfig) -> Float[Array, "..."]:
    """An input_scale of 1 in the shape the config's checkpoints hold: () for an SAE, (2,) for a
    transcoder's (s_in, s_out)."""
    return jnp.ones((2,), jnp.float32) if cfg.is_transcoder else jnp.float32(1.0)


def column_scales(input_scale: Float[Array, "..."], cfg: SAEConfig) -> Float[Array, "..."]:
    """What a batch row is multiplied by: the scalar s of an SAE, or for a transcoder the vector
    [s_in]·d_in ++ [s_out]·d_out built from input_scale = (s_in, s_out) (a scalar scales both sides)."""
    s = jnp.asarray(input_scale, jnp.float32)
    if not cfg.is_transcoder or s.ndim == 0:
        return s
    return jnp.concatenate([jnp.full((cfg.d_in,), s[0]), jnp.full((cfg.d_out,), s[1])])

