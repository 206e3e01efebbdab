"""The SAE forward pass for every architecture, as pure functions of (params, x).

Inputs here are already normalised (x · input_scale). Shapes: x [B, d], z and f [B, F].
`mesh` (or None) says how features are split; the maths is the same either way.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import Array, Float, Int

from jaxdict.sae import jumprelu_recipe, matryoshka, sharded_ops
from jaxdict.sae.batchtopk_sparse import batchtopk_sparse
from jaxdict.sae.config import SAEConfig
from jaxdict.sae.jumprelu import jumprelu
from jaxdict.sae.params import SAEParams


@struct.dataclass
class ForwardOutput:
    """Everything a loss or metric needs from one forward pass.

    x_hat: reconstruction [B, d]. pre_acts: z [B, F]. latents: dense f [B, F], or None when the
    TopK path is sparse — then `top_values` / `top_indices` [B, k] carry the active latents.
    fire_counts: [F], on how many tokens of the batch each latent was active. l0: [B] active count.
    batch_threshold: BatchTopK's smallest positive kept activation in this batch (inf if none; 0 for
    other architectures), the statistic its inference threshold averages.
    decode_fallback: 1 when sparse BatchTopK ran the dense maths for this batch, else 0 (None
    elsewhere). prefix_x_hat: a Matryoshka SAE's reconstructions [P, B, d] from the latents below each
    of cfg.matryoshka_prefixes (the last equals x_hat), None without prefixes.
    `sae_loss` for ReLU-L1 returns x_hat and fire_counts only (pre_acts, latents and
    l0 None: its fused step never materialises them; see sae/relu_l1.py) — call `forward` for them.
    """

    x_hat: Float[Array, "B d"]
    pre_acts: Float[Array, "B F"]
    latents: Optional[Float[Array, "B F"]]
    top_values: Optional[Float[Array, "B k"]]
    top_indices: Optional[Int[Array, "B k"]]
    fire_counts: Float[Array, " F"]
    l0: Float[Array, " B"]
    batch_threshold: Float[Array, ""]
    decode_fallback: Optional[Float[Array, ""]] = None
    prefix_x_hat: Optional[Float[Array, "P B d"]] = None


def constrain_sharding(a: Array, mesh: Mesh | None, spec: P) -> Array:
    return a if mesh is None else jax.lax.with_sharding_constraint(a, NamedSharding(mesh, spec))


def uses_pre_encoder_bias(cfg: SAEConfig) -> bool:
    """TopK-family and JumpReLU SAEs subtract b_dec before encoding; Anthropic's ReLU-L1 recipe does
    not, and neither does a transcoder, whose b_dec lives in the output space (d_out), not the
    input's (Dunefsky et al. 2024; circuit-tracer and sparsify encode x W_enc + b_enc)."""
    return cfg.arch != "relu_l1" and not cfg.is_transcoder


def effective_encoder_bias(params: SAEParams, cfg: SAEConfig) -> Float[Array, " F"]:
    """(x − b_dec) W_enc + b_enc = x W_enc + (b_enc − b_dec W_enc): one matmul fewer (DESIGN §7)."""
    if not uses_pre_encoder_bias(cfg):
        return params.b_enc
    return params.b_enc - params.b_dec @ params.W_enc


def encoder_input(params: SAEParams, x: Float[Array, "B d"], cfg: SAEConfig) -> Float[Array, "B d"]:
    x_in = x.astype(jnp.float32)
    return x_in - params.b_dec if uses_pre_encoder_bias(cfg) else x_in


def pre_activations(params: SAEParams, x: Float[Array, "B d"], cfg: SAEConfig, mesh: Mesh | None = None):
    cdt = jnp.dtype(cfg.compute_dtype)
    z = jnp.dot(x.astype(cdt), params.W_enc.astype(cdt), preferred_element_type=jnp.float32)
    z = z + effective_encoder_bias(params, cfg)
    return constrain_sharding(z, mesh, P(sharded_ops.DATA, sharded_ops.MODEL))


def dense_decode(params: SAEParams, f: Float[Array, "B F"], cfg: SAEConfig) -> Float[Array, "B d"]:
    cdt = jnp.dtype(cfg.compute_dtype)
    return jnp.dot(f.astype(cdt), params.W_dec.astype(cdt), preferred_element_type=jnp.float32) + params.b_dec


def skip_term(params: SAEParams, x: Float[Array, "B d_in"], cfg: SAEConfig) -> Float[Array, "B d_out"] | None:
    """A skip transcoder's x W_skip (Paulo et al. 2025), None without a skip connection."""
    if params.W_skip is None:
        return None
    cdt = jnp.dtype(cfg.compute_dtype)
    return jnp.dot(x.astype(cdt), params.W_skip.astype(cdt), preferred_element_type=jnp.float32)


def forward(
    params: SAEParams, x: Float[Array, "B d"], cfg: SAEConfig, mesh: Mesh | None = None, *, train: bool = True
) -> ForwardOutput:
    """Encode and decode a batch. `train=False` uses BatchTopK's learned threshold (a JumpReLU).

    x is the encoder's input [B, d_in]; x_hat is the reconstruction [B, d_out] (of x for an SAE,
    of the target for a transcoder, skip term included)."""
    # numpy params (e.g. restored for evaluation) cannot be indexed by traced indices in the scans
    # of the sparse decoder; make them jax arrays (a no-op for jax arrays).
    params = jax.tree.map(jnp.asarray, params)
    out = _encode_decode(params, x, cfg, mesh, train)
    skip = skip_term(params, x, cfg)
    if skip is None:
        return out
    return out.replace(x_hat=out.x_hat + skip,
                       prefix_x_hat=None if out.prefix_x_hat is None else out.prefix_x_hat + skip[None])


def _encode_decode(params: SAEParams, x, cfg: SAEConfig, mesh: Mesh | None, train: bool) -> ForwardOutput:
    z = pre_activations(params, x, cfg, mesh)
    zero = jnp.zeros((), jnp.float32)
    if cfg.arch == "relu_l1":
        f = jax.nn.relu(z)
        return _dense_output(params, z, f, cfg, zero, mesh)
    if cfg.arch == "jumprelu" or (cfg.arch == "batchtopk" and not train):
        f = jumprelu(z, params.threshold, jumprelu_recipe.bandwidth(cfg))
        return _dense_output(params, z, f, cfg, zero, mesh)
    if cfg.arch == "batchtopk" and cfg.uses_sparse_decode:
        return _batchtopk_sparse_output(params, x, z, cfg, mesh)
    if cfg.arch == "batchtopk":
        n_keep = x.shape[0] * cfg.k
        cutoff = sharded_ops.global_kth_largest(jax.lax.stop_gradient(z), n_keep, mesh)
        f = jnp.where((z >= cutoff) & (z > 0), z, jnp.zeros_like(z))
        return _dense_output(params, z, f, cfg, smallest_positive_kept(jax.lax.stop_gradient(z), cutoff), mesh)
    # TopK: indices from the dense pre-activations, no gradient through the selection.
    values, indices = sharded_ops.global_topk(jax.lax.stop_gradient(z), cfg.k, mesh)
    if not cfg.uses_sparse_decode:
        kth = values[:, -1:]
        f = jnp.where((z >= kth) & (z > 0), z, jnp.zeros_like(z))
        return _dense_output(params, z, f, cfg, zero, mesh)
    x_in = encoder_input(params, x, cfg)
    # The dense z above carries no gradient on this path; gather_preacts re-attaches the gradient
    # to W_enc / b_enc / x through a sparse backward pass.
    selected = sharded_ops.sharded_gather_preacts(
        x_in, params.W_enc, params.b_enc, indices, jax.lax.stop_gradient(z), mesh
    )
    top_values = jax.nn.relu(selected)
    prefix_x_hat = None
    if cfg.matryoshka_prefixes is None:
        x_hat = sharded_ops.sharded_sparse_decode(top_values, indices, params.W_dec, mesh) + params.b_dec
    else:
        prefix_x_hat = matryoshka.sparse_prefix_decode(top_values, indices, params.W_dec, cfg.matryoshka_prefixes,
                                                       mesh) + params.b_dec
        x_hat = prefix_x_hat[-1]
    active = top_values > 0
    counts = jnp.zeros((cfg.n_features,), jnp.float32).at[indices.reshape(-1)].add(
        active.reshape(-1).astype(jnp.float32)
    )
    counts = constrain_sharding(counts, mesh, P(sharded_ops.MODEL))
    return ForwardOutput(
        x_hat=x_hat,
        # No gradient through the dense z on this path: its backward would be a dense B×d×F
        # matmul. AuxK re-attaches gradients through the same sparse gather (losses.py).
        pre_acts=jax.lax.stop_gradient(z),
        latents=None,
        top_values=top_values,
        top_indices=indices,
        fire_counts=counts,
        l0=jnp.sum(active, axis=-1).astype(jnp.float32),
        batch_threshold=zero,
        prefix_x_hat=prefix_x_hat,
    )


def smallest_positive_kept(z: Float[Array, "B F"], cutoff: Float[Array, ""]) -> Float[Array, ""]:
    """BatchTopK's per-batch statistic for its inference threshold: the smallest positive kept
    activation. A positive cut-off is itself a kept value (the B·k-th largest z); a cut-off ≤ 0 means
    fewer than B·k pre-activations are positive and all of them are kept, so the statistic is their
    minimum (max(cut-off, 0) would drag the EMA towards 0 and let every positive z through at
    inference). inf when nothing is positive: the step then leaves the EMA alone."""
    return jax.lax.cond(cutoff > 0, lambda _: cutoff.astype(jnp.float32),
                        lambda _: jnp.min(jnp.where(z > 0, z, jnp.inf)).astype(jnp.float32), None)


def _batchtopk_sparse_output(params, x, z, cfg, mesh) -> ForwardOutput:
    # z carries no gradient here: the custom VJP inside batchtopk_sparse routes the gradient of the
    # active entries to W_enc / b_enc / x_in sparsely, or runs the dense maths when it must.
    result = batchtopk_sparse(
        encoder_input(params, x, cfg), params.W_enc, params.b_enc, params.W_dec, jax.lax.stop_gradient(z),
        cfg.k, mesh, compute_dtype=cfg.compute_dtype,
    )
    return ForwardOutput(
        x_hat=result.x_hat + params.b_dec,
        pre_acts=jax.lax.stop_gradient(z),
        latents=None,
        top_values=None,
        top_indices=None,
        fire_counts=constrain_sharding(result.fire_counts, mesh, P(sharded_ops.MODEL)),
        l0=result.l0,
        batch_threshold=smallest_positive_kept(jax.lax.stop_gradient(z), result.cutoff),
        decode_fallback=result.dense_fallback.astype(jnp.float32),
    )


def _dense_output(params, z, f, cfg, batch_threshold, mesh) -> ForwardOutput:
    prefix_x_hat = None
    if cfg.matryoshka_prefixes is None:
        x_hat = dense_decode(params, f, cfg)
    else:
        # Every prefix's reconstruction from one decode of each block (sae/matryoshka.py).
        prefix_x_hat = matryoshka.dense_prefix_decode(f, params.W_dec, cfg.matryoshka_prefixes, mesh,
                                                      cfg.compute_dtype) + params.b_dec
        x_hat = prefix_x_hat[-1]
    active = f > 0
    return ForwardOutput(
        x_hat=x_hat,
        pre_acts=z,
        latents=f,
        top_values=None,
        top_indices=None,
        fire_counts=jnp.sum(active, axis=0, dtype=jnp.float32),
        l0=jnp.sum(active, axis=-1).astype(jnp.float32),
        batch_threshold=batch_threshold,
        prefix_x_hat=prefix_x_hat,
    )


def dense_latents(out: ForwardOutput, n_features: int) -> Float[Array, "B F"]:
    """f as a dense [B, F] array, whichever path produced it (for evaluation, not the hot loop)."""
    if out.latents is not None:
        return out.latents
    rows = jnp.arange(out.top_indices.shape[0])[:, None]
    dense = jnp.zeros((out.top_indices.shape[0], n_features), out.top_values.dtype)
    return dense.at[rows, out.top_indices].set(out.top_values)
