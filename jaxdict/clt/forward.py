"""The CLT forward pass and loss.

    z_l   = x_l W_enc[l] + b_enc[l]                          (x_l = resid_mid.l, features of layer l)
    a_l   = σ(z_l)                                           (JumpReLU, TopK or BatchTopK per layer)
    ŷ_l'  = Σ_{l ≤ l'} a_l W_dec[l][:, l' − l] + b_dec[l']   (reconstructs mlp_out.l')
    loss  = mean_b Σ_l' ‖y_l' − ŷ_l'‖² + λ · mean_b Σ_l Σ_i P(a_li ‖W_dec,i^l‖)

P(u) = tanh(c·u) (Ameisen et al. 2025) or u (penalty "l1"); ‖W_dec,i^l‖ is the decoder norm
concatenated over all output layers (params.decoder_norms). TopK / BatchTopK take no penalty
(Gao et al. 2024; Bussmann et al. 2024). The sharded top-k, BatchTopK cut-off, gathered
pre-activations and sparse decode are jaxdict.sae.sharded_ops', applied layer by layer.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import Array, Float

from jaxdict.clt.config import CLTConfig
from jaxdict.clt.params import CLTParams, decoder_norms
from jaxdict.sae import sharded_ops
from jaxdict.sae.axes import DATA, MODEL
from jaxdict.sae.forward import smallest_positive_kept
from jaxdict.sae.jumprelu import heaviside_step, jumprelu


@struct.dataclass
class CLTOutput:
    y_hat: Float[Array, "B L d"]
    pre_acts: Float[Array, "B L F"]
    latents: Float[Array, "B L F"] | None  # None on the sparse TopK path
    l0: Float[Array, "L"]  # mean active features per token, per layer
    batch_threshold: Float[Array, "L"]  # BatchTopK's smallest positive kept z per layer (else 0)


def _constrain(a: Array, mesh: Mesh | None, spec: P) -> Array:
    return a if mesh is None else jax.lax.with_sharding_constraint(a, NamedSharding(mesh, spec))


def pre_activations(params: CLTParams, x: Float[Array, "B L d"], mesh: Mesh | None = None):
    z = jnp.einsum("bld,ldf->blf", x, params.W_enc) + params.b_enc[None]
    return _constrain(z, mesh, P(DATA, None, MODEL))


def dense_decode(params: CLTParams, a: Float[Array, "B L F"]) -> Float[Array, "B L d"]:
    """Σ_{l ≤ l'} a_l W_dec[l][:, l' − l] + b_dec: one [B, F] × [F, (L − l)·d] matmul per source
    layer (L(L+1)/2 blocks, none of them zero)."""
    B, L = a.shape[0], a.shape[1]
    y = jnp.broadcast_to(params.b_dec[None], (B, L, params.b_dec.shape[1]))
    for layer, block in enumerate(params.W_dec):
        part = jnp.einsum("bf,fmd->bmd", a[:, layer], block)
        y = y.at[:, layer:layer + block.shape[1]].add(part)
    return y


def _topk_sparse(params: CLTParams, x, z, cfg: CLTConfig, mesh):
    """Each layer's k winners per token, their pre-activations gathered with a sparse backward,
    decoded from the k active rows of every decoder block only (sharded_ops.sharded_sparse_decode:
    B·k·(L − l)·d work per source layer instead of B·F·(L − l)·d)."""
    B, L, d = x.shape
    y = jnp.broadcast_to(params.b_dec[None], (B, L, d))
    l0 = []
    for layer, block in enumerate(params.W_dec):
        z_l = jax.lax.stop_gradient(z[:, layer])
        _, idx = sharded_ops.global_topk(z_l, cfg.k, mesh)
        vals = jax.nn.relu(sharded_ops.sharded_gather_preacts(
            x[:, layer], params.W_enc[layer], params.b_enc[layer], idx, z_l, mesh))
        table = block.reshape(block.shape[0], -1)  # [F, span·d], rows still split over model
        span = block.shape[1]
        part = sharded_ops.sharded_sparse_decode(vals, idx, table, mesh).reshape(B, span, d)
        y = y.at[:, layer:layer + span].add(part)
        l0.append(jnp.mean(jnp.sum(vals > 0, axis=-1, dtype=jnp.float32)))
    return y, jnp.stack(l0)


def _activate(params: CLTParams, z, cfg: CLTConfig, mesh, train: bool):
    """(latents [B, L, F], batch_threshold [L])."""
    zero = jnp.zeros((cfg.n_layers,), jnp.float32)
    if cfg.arch == "jumprelu":
        return jumprelu(z, params.threshold, cfg.jumprelu_bandwidth), zero
    if cfg.arch == "batchtopk" and not train:  # the inference form: a JumpReLU at the EMA threshold
        return z * (z > params.threshold[None]).astype(z.dtype), zero
    B, L, F = z.shape
    masks, stats = [], []
    for layer in range(L):
        z_l = jax.lax.stop_gradient(z[:, layer])
        if cfg.arch == "topk":
            _, idx = sharded_ops.global_topk(z_l, cfg.k, mesh)
            masks.append(jnp.zeros((B, F), z.dtype).at[jnp.arange(B)[:, None], idx].set(1.0))
            stats.append(jnp.float32(0))
        else:  # BatchTopK (Bussmann et al. 2024) per layer: the k·B largest of the layer's B·F
            cutoff = sharded_ops.global_kth_largest(z_l, cfg.k * B, mesh)
            masks.append((z_l >= cutoff).astype(z.dtype))
            stats.append(smallest_positive_kept(z_l, cutoff))
    mask = _constrain(jnp.stack(masks, axis=1), mesh, P(DATA, None, MODEL))
    return jax.nn.relu(z) * mask, jnp.stack(stats)


def forward(params: CLTParams, x: Float[Array, "B L d"], cfg: CLTConfig, mesh: Mesh | None = None,
            train: bool = True) -> CLTOutput:
    z = pre_activations(params, x, mesh)
    if cfg.arch == "topk" and cfg.decode == "sparse":
        y_hat, l0 = _topk_sparse(params, x, z, cfg, mesh)
        zero = jnp.zeros((cfg.n_layers,), jnp.float32)
        return CLTOutput(y_hat=y_hat, pre_acts=z, latents=None, l0=l0, batch_threshold=zero)
    a, batch_threshold = _activate(params, z, cfg, mesh, train)
    l0 = jnp.mean(jnp.sum(a > 0, axis=-1, dtype=jnp.float32), axis=0)
    return CLTOutput(y_hat=dense_decode(params, a), pre_acts=z, latents=a, l0=l0, batch_threshold=batch_threshold)


def sparsity_penalty(params: CLTParams, latents: Float[Array, "B L F"], cfg: CLTConfig,
                     pre_acts: Float[Array, "B L F"] | None = None) -> Float[Array, ""]:
    """mean_b Σ_l Σ_i P(a_bli · ‖W_dec,i^l‖), before λ; for "l0_target", (L0/T − 1)² with L0 the
    mean over tokens and layers of Σ_i H(z_bli − θ_li)."""
    if cfg.penalty == "l0_target":
        fired = heaviside_step(pre_acts, params.threshold, cfg.jumprelu_bandwidth)
        l0 = jnp.mean(jnp.sum(fired, axis=-1))
        return jnp.square(l0 / jnp.float32(cfg.target_l0) - 1.0)
    scaled = latents * decoder_norms(params)[None]
    per_entry = jnp.tanh(cfg.tanh_scale * scaled) if cfg.penalty == "tanh" else scaled
    return jnp.mean(jnp.sum(per_entry, axis=(1, 2)))


def clt_loss(params: CLTParams, x, y, cfg: CLTConfig, mesh: Mesh | None = None):
    """(loss, (output, parts)): mse = mean_b Σ_l' ‖y_l' − ŷ_l'‖² (summed over output layers, as
    Ameisen et al. 2025), plus λ·penalty for JumpReLU."""
    out = forward(params, x, cfg, mesh, train=True)
    residual = y - out.y_hat
    per_layer_sq = jnp.mean(jnp.sum(jnp.square(residual), axis=-1), axis=0)  # [L]
    mse = jnp.sum(per_layer_sq)
    penalty = sparsity_penalty(params, out.latents, cfg, out.pre_acts) if cfg.arch == "jumprelu" else jnp.float32(0)
    loss = mse + jnp.float32(cfg.sparsity_coeff) * penalty
    centred = y - jnp.mean(y, axis=0, keepdims=True)
    fvu = per_layer_sq / jnp.maximum(jnp.mean(jnp.sum(jnp.square(centred), axis=-1), axis=0), 1e-30)
    return loss, (out, {"mse": mse, "penalty": penalty, "fvu": fvu, "l0": out.l0})
