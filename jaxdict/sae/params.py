"""SAE parameters as a pytree, their initialisation, and folding the input scale into them."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float

from jaxdict.sae import jumprelu_recipe
from jaxdict.sae.config import SAEConfig


@struct.dataclass
class SAEParams:
    """W_enc [d_in, F], b_enc [F], W_dec [F, d_in], b_dec [d_in], threshold [F] or None.

    Parameters act on *normalised* inputs (x · input_scale) during training; `fold_input_scale`
    turns them into parameters that act on raw activations.
    """

    W_enc: Float[Array, "d_in F"]
    b_enc: Float[Array, " F"]
    W_dec: Float[Array, "F d_in"]
    b_dec: Float[Array, " d_in"]
    threshold: Optional[Float[Array, " F"]] = None


def init_params(cfg: SAEConfig, key: jax.Array) -> SAEParams:
    """Initialise as the literature does for each architecture.

    ReLU-L1: decoder rows random directions of norm 0.1, W_enc = W_decᵀ, zero biases (Anthropic,
    April 2024 update). TopK / BatchTopK / JumpReLU: unit-norm decoder rows with W_enc = W_decᵀ
    (Gao et al. 2024 §2.4 "tied init"; Gemma Scope App. B), JumpReLU θ = θ₀ (jumprelu_recipe).
    """
    directions = jax.random.normal(key, (cfg.n_features, cfg.d_in), dtype=jnp.float32)
    directions = directions / jnp.linalg.norm(directions, axis=-1, keepdims=True)
    norm = cfg.dec_init_norm if cfg.arch == "relu_l1" else 1.0
    W_dec = directions * jnp.float32(norm)
    threshold = None
    if cfg.arch == "jumprelu":
        threshold = jnp.full((cfg.n_features,), jumprelu_recipe.init_threshold(cfg), jnp.float32)
    elif cfg.arch == "batchtopk":
        # Learned from data during training (EMA); 0 means "not yet estimated".
        threshold = jnp.zeros((cfg.n_features,), jnp.float32)
    return SAEParams(
        W_enc=W_dec.T,
        b_enc=jnp.zeros((cfg.n_features,), jnp.float32),
        W_dec=W_dec,
        b_dec=jnp.zeros((cfg.d_in,), jnp.float32),
        threshold=threshold,
    )


def fold_input_scale(params: SAEParams, input_scale: float | jax.Array) -> SAEParams:
    """Parameters for raw activations, given those trained on x · input_scale.

    Encoding raw x: (s·x − b_dec) W_enc = (x − b_dec/s)(s·W_enc); decoding back to raw units divides
    the decoder and its bias by s. Thresholds act on latents, which do not change.
    """
    s = jnp.asarray(input_scale, jnp.float32)
    return params.replace(W_enc=params.W_enc * s, W_dec=params.W_dec / s, b_dec=params.b_dec / s)


def decoder_row_norms(params: SAEParams) -> Float[Array, " F"]:
    return jnp.linalg.norm(params.W_dec, axis=-1)
