"""Training losses of every architecture (DESIGN.md §4), on normalised inputs.

All terms are means over tokens of per-token sums over d_in or F, so a loss never depends on the
batch size (SAELens and others have shipped MSE that did).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jaxtyping import Array, Bool, Float

from jaxdict.sae import sharded_ops
from jaxdict.sae.config import SAEConfig
from jaxdict.sae.forward import ForwardOutput, dense_decode, encoder_input, forward
from jaxdict.sae.jumprelu import heaviside_step
from jaxdict.sae.params import SAEParams, decoder_row_norms
from jaxdict.sae.relu_l1 import relu_l1_encode_decode


def per_token_sq_error(x: Float[Array, "B d"], x_hat: Float[Array, "B d"]) -> Float[Array, " B"]:
    return jnp.sum(jnp.square(x.astype(jnp.float32) - x_hat), axis=-1)


def aux_k_loss(
    params: SAEParams,
    x: Float[Array, "B d"],
    out: ForwardOutput,
    dead: Bool[Array, " F"],
    cfg: SAEConfig,
    mesh: Mesh | None,
) -> Float[Array, ""]:
    """AuxK (Gao et al. 2024 App. A.2): reconstruct the residual e = x − x̂ (detached) from the
    k_aux largest *dead* latents; normalised MSE, so it is 1 for the trivial prediction ê = mean(e).

    Skipped with lax.cond while nothing is dead: early in training this costs nothing.
    """

    def with_dead(_):
        residual = jax.lax.stop_gradient(x.astype(jnp.float32) - out.x_hat)
        z_dead = jnp.where(dead[None, :], out.pre_acts, -jnp.inf)
        values, indices = sharded_ops.global_topk(jax.lax.stop_gradient(z_dead), cfg.effective_aux_k, mesh)
        if out.latents is None:
            # Sparse path: gradients reach only the k_aux selected latents, as in the main loss.
            selected = sharded_ops.sharded_gather_preacts(
                encoder_input(params, x, cfg), params.W_enc, params.b_enc, indices, out.pre_acts, mesh
            )
            usable = jnp.isfinite(values) & (selected > 0)
            aux_values = jnp.where(usable, selected, jnp.zeros_like(selected))
            residual_hat = sharded_ops.sharded_sparse_decode(aux_values, indices, params.W_dec, mesh)
        else:
            kth = values[:, -1:]
            f_aux = jnp.where(dead[None, :] & (z_dead >= kth) & (out.pre_acts > 0), out.pre_acts, 0.0)
            residual_hat = dense_decode(params, f_aux, cfg) - params.b_dec
        err = jnp.sum(jnp.square(residual - residual_hat))
        baseline = jnp.sum(jnp.square(residual - jnp.mean(residual, axis=0, keepdims=True)))
        return err / jnp.maximum(baseline, 1e-12)

    return jax.lax.cond(jnp.any(dead), with_dead, lambda _: jnp.zeros((), jnp.float32), None)


def _relu_l1_loss(params, x, cfg, mesh, sparsity_coeff):
    x_hat, colsum, counts = relu_l1_encode_decode(params, x, cfg, mesh)
    mse = jnp.mean(per_token_sq_error(x, x_hat))
    # λ Σ_i f_i ‖W_dec,i‖ (Anthropic April 2024): the decoder norm lives in the penalty. Its mean
    # over tokens is colsum(f) · norms / B, and colsum(f) comes from the relu pass itself.
    penalty = jnp.dot(colsum, decoder_row_norms(params)) / jnp.float32(x.shape[0])
    zero = jnp.zeros((), jnp.float32)
    out = ForwardOutput(x_hat=x_hat, pre_acts=None, latents=None, top_values=None, top_indices=None,
                        fire_counts=counts, l0=None, batch_threshold=zero)
    return mse + sparsity_coeff * penalty, (out, {"mse": mse, "sparsity_loss": penalty})


def sae_loss(
    params: SAEParams,
    x: Float[Array, "B d"],
    cfg: SAEConfig,
    mesh: Mesh | None,
    *,
    sparsity_coeff: Float[Array, ""],
    dead: Bool[Array, " F"],
) -> tuple[Float[Array, ""], tuple[ForwardOutput, dict[str, Array]]]:
    """Total loss and its parts. `sparsity_coeff` is λ (ReLU-L1, after warm-up) or the L0/tanh
    coefficient (JumpReLU); TopK-family ignore it. `dead` marks latents eligible for AuxK.

    For ReLU-L1 the returned ForwardOutput carries x_hat and fire_counts only (pre_acts, latents
    and l0 are None): its [B, F] arrays are never materialised apart from f inside the fused
    encode/decode (jaxdict/sae/relu_l1.py); call `forward` for them."""
    if cfg.arch == "relu_l1":
        return _relu_l1_loss(params, x, cfg, mesh, sparsity_coeff)
    out = forward(params, x, cfg, mesh, train=True)
    sq_err = per_token_sq_error(x, out.x_hat)
    mse = jnp.mean(sq_err)
    parts: dict[str, Array] = {"mse": mse}
    loss = mse
    if cfg.arch == "jumprelu":
        if cfg.jumprelu_penalty == "l0":
            penalty = jnp.mean(jnp.sum(heaviside_step(out.pre_acts, params.threshold, cfg.jumprelu_bandwidth), axis=-1))
        else:
            # tanh(c · f_i ‖W_dec,i‖): a smooth, saturating stand-in for L0 (Anthropic, Jan 2025).
            scaled = out.latents * decoder_row_norms(params)[None, :]
            penalty = jnp.mean(jnp.sum(jnp.tanh(cfg.tanh_scale * scaled), axis=-1))
        parts["sparsity_loss"] = penalty
        loss = loss + sparsity_coeff * penalty
    else:
        aux = aux_k_loss(params, x, out, dead, cfg, mesh)
        parts["aux_loss"] = aux
        loss = loss + cfg.aux_coeff * aux
    return loss, (out, parts)
