"""Training losses of every architecture (DESIGN.md §4), on normalised inputs.

All terms are means over tokens of per-token sums over d_in or F, so a loss never depends on the
batch size (SAELens and others have shipped MSE that did).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jaxtyping import Array, Bool, Float, Int

from jaxdict.sae import auxk, jumprelu_recipe, matryoshka
from jaxdict.sae.config import SAEConfig
from jaxdict.sae.forward import ForwardOutput, forward, skip_term
from jaxdict.sae.params import SAEParams, decoder_row_norms
from jaxdict.sae.relu_l1 import relu_l1_encode_decode
from jaxdict.sae.transcoder import split_batch


def per_token_sq_error(x: Float[Array, "B d"], x_hat: Float[Array, "B d"]) -> Float[Array, " B"]:
    return jnp.sum(jnp.square(x.astype(jnp.float32) - x_hat), axis=-1)


def _data_variance(x: Float[Array, "B d"]) -> Float[Array, ""]:
    """E‖x − x̄‖² over the batch, detached: AuxK's weight against our raw-MSE main term.

    OpenAI's TopK loss (Gao et al. 2024; sparse_autoencoder/train.py) is mse/Var(x) +
    (1/32)·‖e − ê‖²/Var(e): both terms normalised. Our main term is the raw MSE (= Var(x) × theirs),
    so the AuxK term is multiplied by Var(x) to keep OpenAI's ratio. Without it AuxK was Var(x)×
    (≈ 45 on Gemma 3 270M resid_post.9 at E‖x‖² = d_in) weaker than OpenAI's; under Adam a dead
    latent's steps then stayed small while its second moments still held main-loss gradients."""
    x = jax.lax.stop_gradient(x.astype(jnp.float32))
    return jnp.mean(jnp.sum(jnp.square(x - jnp.mean(x, axis=0, keepdims=True)), axis=-1))


def _relu_l1_loss(params, x, target, cfg, mesh, sparsity_coeff):
    x_hat, colsum, counts = relu_l1_encode_decode(params, x, cfg, mesh)
    skip = skip_term(params, x, cfg)
    x_hat = x_hat if skip is None else x_hat + skip
    mse = jnp.mean(per_token_sq_error(target, x_hat))
    # λ Σ_i f_i ‖W_dec,i‖ (Anthropic April 2024): the decoder norm lives in the penalty. Its mean
    # over tokens is colsum(f) · norms / B, and colsum(f) comes from the relu pass itself.
    penalty = jnp.dot(colsum, decoder_row_norms(params)) / jnp.float32(x.shape[0])
    zero = jnp.zeros((), jnp.float32)
    out = ForwardOutput(x_hat=x_hat, pre_acts=None, latents=None, top_values=None, top_indices=None,
                        fire_counts=counts, l0=None, batch_threshold=zero)
    return mse + sparsity_coeff * penalty, (out, {"mse": mse, "sparsity_loss": penalty})


def _reconstruction_loss(x, out: ForwardOutput, cfg: SAEConfig) -> tuple[Float[Array, ""], dict[str, Array]]:
    """The mean per-token squared error; for a Matryoshka SAE the mean of it over the prefixes
    (sae/matryoshka.py: the selected latents truncated to each prefix). `mse` is always the full
    reconstruction's, so it compares across architectures; `mse_prefix_<m>` are the others."""
    if out.prefix_x_hat is None:
        mse = jnp.mean(per_token_sq_error(x, out.x_hat))
        return mse, {"mse": mse}
    prefix_mse = matryoshka.prefix_sq_errors(x, out.prefix_x_hat)
    loss = jnp.mean(prefix_mse)
    parts = {"mse": prefix_mse[-1], "matryoshka_loss": loss}
    parts.update({f"mse_prefix_{m}": prefix_mse[i] for i, m in enumerate(cfg.matryoshka_prefixes[:-1])})
    return loss, parts


def _loss_without_aux_k(params: SAEParams, x: Float[Array, "B d"], cfg: SAEConfig, mesh: Mesh | None,
                        sparsity_coeff: Float[Array, ""]) -> tuple[Float[Array, ""], tuple[ForwardOutput, dict[str, Array]]]:
    """Every term but AuxK: the reconstruction and the architecture's sparsity terms."""
    x, target = split_batch(x, cfg)
    if cfg.arch == "relu_l1":
        return _relu_l1_loss(params, x, target, cfg, mesh, sparsity_coeff)
    out = forward(params, x, cfg, mesh, train=True)
    loss, parts = _reconstruction_loss(target, out, cfg)
    if cfg.arch == "jumprelu":
        norms = decoder_row_norms(params)
        penalty = jumprelu_recipe.sparsity_penalty(out.pre_acts, out.latents, params.threshold, norms, cfg)
        parts["sparsity_loss"] = penalty
        loss = loss + sparsity_coeff * penalty
        if cfg.pre_act_coeff > 0 and cfg.jumprelu_penalty == "l0_target":
            parts["pre_act_loss"] = jumprelu_recipe.pre_act_loss(out.pre_acts, params.threshold, norms, cfg)
            loss = loss + parts["pre_act_loss"]
    return loss, (out, parts)


def uses_aux_k(cfg: SAEConfig) -> bool:
    """TopK and BatchTopK (Matryoshka included) carry AuxK; with aux_coeff = 0 it is reported as 0."""
    return cfg.arch in ("topk", "batchtopk")


def _aux_k_inputs(x, out: ForwardOutput, cfg: SAEConfig, mesh: Mesh | None, dead, step, aux_demand):
    """AuxK's inputs from the batch and the forward pass: (encoder input, detached residual of the
    target, step, the buffer size its dead latents need (auxk.buffer_demand), weight against the
    main term)."""
    x, target = split_batch(x, cfg)
    residual = jax.lax.stop_gradient(target.astype(jnp.float32) - out.x_hat)
    demand = auxk.buffer_demand(dead, mesh) if aux_demand is None else aux_demand
    step = jnp.int32(0) if step is None else step
    return x, residual, step, demand, cfg.aux_coeff * _data_variance(target)


def _runs_aux_k(cfg: SAEConfig, parts: dict[str, Array], dead) -> bool:
    """Whether AuxK is a term of this loss; a TopK-family SAE with aux_coeff = 0 reports it as 0."""
    if not uses_aux_k(cfg):
        return False
    if cfg.aux_coeff == 0:
        zero = jnp.zeros((), jnp.float32)
        parts.update(aux_loss=zero, aux_dead_latents=jnp.sum(dead, dtype=jnp.float32), aux_grad_latents=zero)
        return False
    return True


def sae_loss(
    params: SAEParams,
    x: Float[Array, "B d"],
    cfg: SAEConfig,
    mesh: Mesh | None,
    *,
    sparsity_coeff: Float[Array, ""],
    dead: Bool[Array, " F"],
    step: Int[Array, ""] | None = None,
    aux_demand: Int[Array, ""] | None = None,
) -> tuple[Float[Array, ""], tuple[ForwardOutput, dict[str, Array]]]:
    """Total loss and its parts on a normalised batch x (an SAE's [B, d_in], a transcoder's
    [B, d_in + d_out] rows [x | y], see sae/transcoder.py). `sparsity_coeff` is λ (ReLU-L1, after warm-up) or the L0/tanh
    coefficient (JumpReLU); TopK-family ignore it. `dead` marks latents eligible for AuxK; `step`
    moves AuxK's window when more are dead than its buffer holds; `aux_demand` (default:
    auxk.buffer_demand of `dead`) sizes that buffer — under a sweep axis, that of all members.

    For ReLU-L1 the returned ForwardOutput carries x_hat and fire_counts only (pre_acts, latents
    and l0 are None): its [B, F] arrays are never materialised apart from f inside the fused
    encode/decode (jaxdict/sae/relu_l1.py); call `forward` for them.

    The train step uses `sae_loss_and_grads`, equal to value_and_grad of this."""
    loss, (out, parts) = _loss_without_aux_k(params, x, cfg, mesh, sparsity_coeff)
    if not _runs_aux_k(cfg, parts, dead):
        return loss, (out, parts)
    x_in, residual, step, demand, weight = _aux_k_inputs(x, out, cfg, mesh, dead, step, aux_demand)
    aux, counts = auxk.aux_k_loss(params, x_in, residual, dead, step, demand, cfg, mesh, pre_acts=out.pre_acts)
    parts.update(counts, aux_loss=aux)
    return loss + weight * aux, (out, parts)


def sae_loss_and_grads(
    params: SAEParams,
    x: Float[Array, "B d"],
    cfg: SAEConfig,
    mesh: Mesh | None,
    *,
    sparsity_coeff: Float[Array, ""],
    dead: Bool[Array, " F"],
    step: Int[Array, ""] | None = None,
    aux_demand: Int[Array, ""] | None = None,
) -> tuple[tuple[Float[Array, ""], tuple[ForwardOutput, dict[str, Array]]], SAEParams]:
    """`jax.value_and_grad(sae_loss, has_aux=True)` with AuxK's gradient taken inside each branch of
    its buffer switch (auxk.add_aux_k_gradient) rather than by differentiating through the switch.
    AuxK reads only detached values of the forward pass (residual, pre-activations), so the two
    gradients add."""
    (loss, (out, parts)), grads = jax.value_and_grad(_loss_without_aux_k, has_aux=True)(
        params, x, cfg, mesh, sparsity_coeff)
    if not _runs_aux_k(cfg, parts, dead):
        return (loss, (out, parts)), grads
    x_in, residual, step, demand, weight = _aux_k_inputs(x, out, cfg, mesh, dead, step, aux_demand)
    grads, aux, counts = auxk.add_aux_k_gradient(grads, params, x_in, residual, dead, step, demand, cfg, mesh,
                                                 out.pre_acts, weight)
    parts.update(counts, aux_loss=aux)
    return (loss + weight * aux, (out, parts)), grads
