"""CLT parameters, their initialisation and their sharding over the mesh.

Decoder layout: a ragged tuple, W_dec[l] of shape [F, L − l, d] — feature i of layer l writes
W_dec[l][i, m] to mlp_out.(l + m). This is circuit-tracer's own layout (CrossLayerTranscoder.W_dec,
a ParameterList of (d_transcoder, n_layers − i, d_model)), so export is a copy, and it stores only
the L(L+1)/2 real blocks. The alternative, one dense [L, F, L, d] array with the l' < l blocks
masked to zero (Gemma Scope 2's `w_dec` layout, as circuit-tracer's load_gemma_scope_2_clt reads
it), stores L² blocks: 2L/(L+1) = 1.89× the memory at L = 18 (324 vs 171 blocks of F × d), and 3×
that again in Adam's two moments, plus a dense decode doing 1.89× the FLOPs on zeros. Each ragged
block is split over `model` along F exactly like an SAE decoder, so sharding needs no mask.

Per device, with F features per layer over a model axis of size m (fp32, parameters only):
  W_enc L·d·F/m + W_dec L(L+1)/2·F·d/m + b_enc, threshold L·F/m + b_dec L·d (replicated).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxtyping import Array, Float

from jaxdict.clt.config import CLTConfig
from jaxdict.sae.axes import MODEL


@struct.dataclass
class CLTParams:
    """W_enc [L, d, F], b_enc [L, F], W_dec (L arrays [F, span(l), d]; span L − l unless the config's
    decoder_span caps it), b_dec [L, d] (one bias per
    output layer), threshold [L, F] (JumpReLU's learned θ; BatchTopK's inference threshold, an
    EMA, not trained) or None (TopK)."""

    W_enc: Float[Array, "L d F"]
    b_enc: Float[Array, "L F"]
    W_dec: tuple
    b_dec: Float[Array, "L d"]
    threshold: Optional[Float[Array, "L F"]] = None


def init_params(cfg: CLTConfig, key: jax.Array) -> CLTParams:
    """Encoder columns: independent unit random directions, so z ~ N(0, 1) on inputs with
    E‖x‖² = d (the scale jaxdict's JumpReLU recipe assumes). Decoders: each feature's vectors,
    concatenated over its output layers, a unit random direction — the unit decoder rows of Gao et al.
    2024 §2.4, measured with the concatenated norm the penalty uses (Ameisen et al. 2025). Biases 0;
    θ starts at θ₀ (JumpReLU), 0 = "not yet estimated" (BatchTopK)."""
    L, d, F = cfg.n_layers, cfg.d_model, cfg.n_features
    enc_key, dec_key = jax.random.split(key)
    W_enc = jax.random.normal(enc_key, (L, d, F), jnp.float32)
    W_enc = W_enc / jnp.linalg.norm(W_enc, axis=1, keepdims=True)
    # One draw for every decoder block, [F, Σ_l (L − l)·d], cut into the blocks: one random-number
    # kernel to compile instead of L (jit compile time dominated the init, BENCHMARKS.md "CLT
    # initialisation"); rows stay whole per feature, so a draw split over `model` stays local.
    flat = jax.random.normal(dec_key, (F, cfg.n_decoder_blocks * d), jnp.float32)
    W_dec, start = [], 0
    for layer in range(L):
        width = cfg.span(layer) * d
        block = flat[:, start:start + width]
        start += width
        W_dec.append((block / jnp.linalg.norm(block, axis=1, keepdims=True)).reshape(F, cfg.span(layer), d))
    threshold = None
    if cfg.arch == "jumprelu":
        threshold = jnp.full((L, F), cfg.init_threshold, jnp.float32)
    elif cfg.arch == "batchtopk":
        threshold = jnp.zeros((L, F), jnp.float32)
    return CLTParams(W_enc=W_enc, b_enc=jnp.zeros((L, F), jnp.float32), W_dec=tuple(W_dec),
                     b_dec=jnp.zeros((L, d), jnp.float32), threshold=threshold)


def param_specs(params: CLTParams) -> CLTParams:
    """PartitionSpecs: every feature axis over `model`, everything else replicated."""
    return CLTParams(
        W_enc=P(None, None, MODEL), b_enc=P(None, MODEL),
        W_dec=tuple(P(MODEL, None, None) for _ in params.W_dec), b_dec=P(None, None),
        threshold=None if params.threshold is None else P(None, MODEL),
    )


def param_shardings(params: CLTParams, mesh) -> CLTParams:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(params),
                        is_leaf=lambda s: isinstance(s, P))


def decoder_norms(params: CLTParams) -> Float[Array, "L F"]:
    """‖W_dec,i^l‖: the norm of feature i's decoder vectors concatenated over all its output layers
    (Ameisen et al. 2025), one row per source layer."""
    return jnp.stack([jnp.sqrt(jnp.sum(jnp.square(block), axis=(1, 2))) for block in params.W_dec])


def bytes_per_device(cfg: CLTConfig, model_axis: int, bytes_per_value: int = 4) -> int:
    """Parameter bytes per device with features split over a model axis of this size (the formula
    in the module docstring)."""
    L, d, F = cfg.n_layers, cfg.d_model, cfg.n_features
    if F % model_axis:
        raise ValueError(f"n_features={F} is not divisible by the model axis {model_axis}")
    sharded = L * d * F + cfg.n_decoder_blocks * F * d + L * F * (1 + (cfg.arch != "topk"))
    return bytes_per_value * (sharded // model_axis + L * d)
