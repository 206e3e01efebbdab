"""SAE parameters as a pytree, their initialisation, and folding the input scale into them."""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxdict.sae import jumprelu_recipe
from jaxdict.sae.config import SAEConfig


@dataclasses.dataclass(frozen=True)
class SAEParams:
    """W_enc [d_in, F], b_enc [F], W_dec [F, d_out], b_dec [d_out], threshold [F] or None, and a
    skip transcoder's W_skip [d_in, d_out] (None otherwise). d_out = d_in for an SAE.

    Parameters act on *normalised* inputs (x · input_scale) during training; `fold_input_scale`
    turns them into parameters that act on raw activations.

    A pytree whose key paths are its field names. Without a skip connection it flattens to exactly
    the five children it had before W_skip existed (threshold included, None or not): the Adam
    moments in every checkpoint written earlier have that tree, and Orbax restores only into the
    same tree. Whether the W_skip child exists is part of the tree's structure (`has_skip_node`,
    from W_skip at construction), not read from its value: JAX rebuilds trees with None or other
    placeholders as leaves, which must keep their structure.
    """

    W_enc: Float[Array, "d_in F"]
    b_enc: Float[Array, " F"]
    W_dec: Float[Array, "F d_in"]
    b_dec: Float[Array, " d_in"]
    threshold: Optional[Float[Array, " F"]] = None
    W_skip: Optional[Float[Array, "d_in d_out"]] = None
    has_skip_node: Optional[bool] = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # True, or None for "no W_skip node" (None, not False, so that code reading the arrays with
        # `vars(params)` and dropping None values sees exactly the arrays).
        if self.W_skip is not None or self.has_skip_node:
            object.__setattr__(self, "has_skip_node", True)
        else:
            object.__setattr__(self, "has_skip_node", None)

    def replace(self, **changes) -> "SAEParams":
        if "W_skip" in changes and "has_skip_node" not in changes:
            changes["has_skip_node"] = self.has_skip_node or changes["W_skip"] is not None
        return dataclasses.replace(self, **changes)


_FIELDS_BEFORE_SKIP = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")


def _flatten_with_keys(params: SAEParams):
    names = _FIELDS_BEFORE_SKIP + (("W_skip",) if params.has_skip_node else ())
    return [(jax.tree_util.GetAttrKey(n), getattr(params, n)) for n in names], bool(params.has_skip_node)


def _unflatten(has_skip_node: bool, children) -> SAEParams:
    children = list(children)
    return SAEParams(*children[:5], W_skip=children[5] if has_skip_node else None, has_skip_node=has_skip_node)


jax.tree_util.register_pytree_with_keys(
    SAEParams, _flatten_with_keys, _unflatten,
    flatten_func=lambda p: (lambda kv, aux: ([v for _, v in kv], aux))(*_flatten_with_keys(p)))


def init_params(cfg: SAEConfig, key: jax.Array) -> SAEParams:
    """Initialise as the literature does for each architecture.

    ReLU-L1: decoder rows random directions of norm 0.1, W_enc = W_decᵀ, zero biases (Anthropic,
    April 2024 update). TopK / BatchTopK / JumpReLU: unit-norm decoder rows with W_enc = W_decᵀ
    (Gao et al. 2024 §2.4 "tied init"; Gemma Scope App. B), JumpReLU θ = θ₀ (jumprelu_recipe).
    Transcoders: input and output spaces differ, so no tied init: encoder columns and decoder rows
    are independent random directions of the same norms, and a skip transcoder's W_skip starts at
    zero (Paulo et al. 2025), so training starts from the plain transcoder.
    """
    norm = jnp.float32(cfg.dec_init_norm if cfg.arch == "relu_l1" else 1.0)
    dec_key, enc_key = jax.random.split(key) if cfg.is_transcoder else (key, None)
    W_dec = random_directions(dec_key, cfg.n_features, cfg.output_width) * norm
    W_enc = W_dec.T if enc_key is None else random_directions(enc_key, cfg.n_features, cfg.d_in).T * norm
    threshold = None
    if cfg.arch == "jumprelu":
        threshold = jnp.full((cfg.n_features,), jumprelu_recipe.init_threshold(cfg), jnp.float32)
    elif cfg.arch == "batchtopk":
        # Learned from data during training (EMA); 0 means "not yet estimated".
        threshold = jnp.zeros((cfg.n_features,), jnp.float32)
    return SAEParams(
        W_enc=W_enc,
        b_enc=jnp.zeros((cfg.n_features,), jnp.float32),
        W_dec=W_dec,
        b_dec=jnp.zeros((cfg.output_width,), jnp.float32),
        threshold=threshold,
        W_skip=jnp.zeros((cfg.d_in, cfg.output_width), jnp.float32) if cfg.skip_connection else None,
    )


def random_directions(key: jax.Array, n: int, width: int) -> Float[Array, "n width"]:
    """n unit vectors of `width`, uniformly random in direction."""
    directions = jax.random.normal(key, (n, width), dtype=jnp.float32)
    return directions / jnp.linalg.norm(directions, axis=-1, keepdims=True)


def fold_input_scale(params: SAEParams, input_scale: float | jax.Array) -> SAEParams:
    """Parameters for raw activations, given those trained on x · input_scale.

    SAE (one scale s): encoding raw x, (s·x − b_dec) W_enc = (x − b_dec/s)(s·W_enc); decoding back
    to raw units divides the decoder and its bias by s. Transcoder (input_scale = (s_in, s_out)):
    z = (s_in·x) W_enc + b_enc, and raw ŷ = (f W_dec + b_dec + (s_in·x) W_skip) / s_out, so W_enc
    takes s_in, W_dec and b_dec 1/s_out, and W_skip s_in/s_out. Thresholds act on latents, which do
    not change.
    """
    s = jnp.asarray(input_scale, jnp.float32)
    s_in, s_out = (s, s) if s.ndim == 0 else (s[0], s[1])
    folded = params.replace(W_enc=params.W_enc * s_in, W_dec=params.W_dec / s_out, b_dec=params.b_dec / s_out)
    if params.W_skip is not None:
        folded = folded.replace(W_skip=params.W_skip * (s_in / s_out))
    return folded


def decoder_row_norms(params: SAEParams) -> Float[Array, " F"]:
    return jnp.linalg.norm(params.W_dec, axis=-1)
