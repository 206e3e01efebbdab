"""JumpReLU and its Heaviside step with straight-through pseudo-derivatives for the threshold.

Rajamanoharan et al. 2024, "Jumping Ahead" (JumpReLU SAEs), eqs. 11–12: with the rectangle kernel
K(u) = 1{|u| < 1/2} and bandwidth ε,

    ∂/∂θ JumpReLU_θ(z) := −(θ/ε) · K((z − θ)/ε)        ∂/∂z JumpReLU_θ(z) := H(z − θ)
    ∂/∂θ H(z − θ)      := −(1/ε) · K((z − θ)/ε)          ∂/∂z H(z − θ)      := 0
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def rectangle(u: Array) -> Array:
    return (jnp.abs(u) < 0.5).astype(u.dtype)


def _reduce_to(grad: Array, shape: tuple[int, ...]) -> Array:
    """Sum a broadcast gradient back to the shape of θ (features are the trailing axis)."""
    lead = grad.ndim - len(shape)
    return jnp.sum(grad, axis=tuple(range(lead))) if lead > 0 else grad


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(z: Float[Array, "... F"], threshold: Float[Array, " F"], bandwidth: float) -> Array:
    """z · H(z − θ)."""
    return z * (z > threshold).astype(z.dtype)


def _jumprelu_fwd(z, threshold, bandwidth):
    return jumprelu(z, threshold, bandwidth), (z, threshold)


def _jumprelu_bwd(bandwidth, residuals, g):
    z, threshold = residuals
    above = (z > threshold).astype(z.dtype)
    eps = jnp.asarray(bandwidth, z.dtype)
    d_threshold = -(threshold / eps) * rectangle((z - threshold) / eps) * g
    return g * above, _reduce_to(d_threshold, threshold.shape).astype(threshold.dtype)


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def heaviside_step(z: Float[Array, "... F"], threshold: Float[Array, " F"], bandwidth: float) -> Array:
    """H(z − θ), used for the L0 penalty."""
    return (z > threshold).astype(z.dtype)


def _step_fwd(z, threshold, bandwidth):
    return heaviside_step(z, threshold, bandwidth), (z, threshold)


def _step_bwd(bandwidth, residuals, g):
    z, threshold = residuals
    eps = jnp.asarray(bandwidth, z.dtype)
    d_threshold = -(1.0 / eps) * rectangle((z - threshold) / eps) * g
    return jnp.zeros_like(z), _reduce_to(d_threshold, threshold.shape).astype(threshold.dtype)


heaviside_step.defvjp(_step_fwd, _step_bwd)

