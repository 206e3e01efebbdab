"""JumpReLU at our input scale: the L0-target penalty, the pre-activation loss, and the scales ε, θ₀
and the penalty coefficient, derived from the data at the start of a run.

Why derive: Gemma Scope's ε = θ₀ = 0.001 (Lieberum et al. 2024, App. B) were set for inputs with
unit mean squared norm; we scale to E‖x‖² = d_in and initialise differently, so their constants put
the STE kernel far inside the spread of our pre-activations (issue 14: 0.288 planted recovery). At
their scale a random unit encoder row gives pre-activations of spread σ_z ≈ ‖x‖/√d ≈ 1/√2304 ≈ 0.02
for Gemma 2 2B, so their ε was ≈ 0.05·σ_z; we take ε = 0.1·σ_z (twice as wide: our runs are ~1000×
shorter, and a wider kernel averages more tokens into each threshold gradient).

The penalty (Gemma Scope 2, McDougall et al. 2025, trains "with a quadratic L0 penalty" towards a
target L0; the exact form below is ours):

    P_L0 = c · (L0_batch / T − 1)²,    L0_batch = mean_b Σ_i H(z_bi − θ_i)

with the Heaviside's straight-through θ-derivative −(1/ε)·K((z − θ)/ε) (Rajamanoharan et al. 2024,
eq. 12). c = 10 · E‖x − μ‖² (the MSE of predicting the mean): an L0 10 % off target costs 10 % of
that MSE, while the reconstruction gains a few per cent from it, so the batch L0 settles within
a few per cent of T (where 2c·(L0/T − 1) balances the MSE's d/d(L0/T), about −0.1·E‖x − μ‖²).

θ starts at θ₀ = ε, as Gemma Scope's θ₀ = ε = 0.001 (Lieberum et al. 2024, App. B): at that height
about half of all latents fire on every token, so every latent receives reconstruction gradient and
finds a direction before the penalty brings L0 down to T (measured: ~1,000 steps at lr 1e-3 on
planted data, d_in 128, T 6). Starting θ where L0 = T instead (an earlier version of this recipe)
left the latents that missed the first batches dead for good: on that planted data 46 % of the
latents never fired and the mean max cosine with the planted directions was 0.915, against 0.994
(9 % dead) from the dense start (experiments/results/quality.md).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxdict.sae.config import SAEConfig
from jaxdict.sae.jumprelu import heaviside_step

BANDWIDTH_PER_SPREAD = 0.1  # ε / σ_z (Gemma Scope's ≈ 0.05, doubled: see the module docstring)
TARGET_COEFF_PER_VARIANCE = 10.0  # c / E‖x − μ‖²
FALLBACK_PENALTY_COEFF = 1e-3  # "l0" / "tanh" without data or l0_coeff: Gemma Scope's value


@dataclasses.dataclass(frozen=True)
class PreActStats:
    """What the recipe reads off the first batch: the spread of z and the variance E‖x − μ‖² of
    the (normalised) inputs."""

    spread: float
    variance: float


def measure_preacts(cfg: SAEConfig, W_enc: np.ndarray, b_dec: np.ndarray, x: np.ndarray,
                    target: np.ndarray | None = None) -> PreActStats:
    """z = (x − b_dec) W_enc at initialisation (b_enc = 0) on the normalised rows `x` [N, d], and the
    variance of what is reconstructed: `target` (a transcoder's output rows), else x itself."""
    x = np.asarray(x, np.float64)
    y = x if target is None else np.asarray(target, np.float64)
    finite = np.all(np.isfinite(x), axis=1) & np.all(np.isfinite(y), axis=1)
    x, y = x[finite], y[finite]
    if len(x) < 2:
        raise ValueError(f"need at least 2 finite rows to measure the pre-activations, got {len(x)}")
    z = (x - np.asarray(b_dec, np.float64)) @ np.asarray(W_enc, np.float64)
    variance = float(np.mean(np.sum(np.square(y - y.mean(axis=0)), axis=1)))
    return PreActStats(spread=float(np.std(z)), variance=variance)


def derive_config(cfg: SAEConfig, stats: PreActStats) -> SAEConfig:
    """Fill the JumpReLU fields left unset (None) from the measured statistics."""
    if cfg.arch != "jumprelu":
        return cfg
    if not (math.isfinite(stats.spread) and stats.spread > 0):
        raise ValueError(f"the pre-activations at initialisation have spread {stats.spread}: constant inputs? "
                         "Set sae.jumprelu_bandwidth and sae.jumprelu_init_threshold explicitly")
    changes = {}
    if cfg.jumprelu_bandwidth is None:
        changes["jumprelu_bandwidth"] = BANDWIDTH_PER_SPREAD * stats.spread
    if cfg.jumprelu_init_threshold is None:
        changes["jumprelu_init_threshold"] = changes.get("jumprelu_bandwidth", cfg.jumprelu_bandwidth)
    if cfg.l0_coeff is None and cfg.jumprelu_penalty == "l0_target":
        changes["l0_coeff"] = TARGET_COEFF_PER_VARIANCE * stats.variance
    return dataclasses.replace(cfg, **changes)


def isotropic_stats(cfg: SAEConfig) -> PreActStats:
    """The statistics for centred isotropic inputs with E‖x‖² = d_in and unit encoder rows (z ~ N(0, 1)):
    what a run without data to look at (a benchmark, a unit test) falls back to."""
    return PreActStats(spread=1.0, variance=float(cfg.d_in))


def bandwidth(cfg: SAEConfig) -> float:
    if cfg.arch != "jumprelu":
        return 1.0  # BatchTopK's inference JumpReLU takes no gradient: ε is unused
    return cfg.jumprelu_bandwidth if cfg.jumprelu_bandwidth is not None else (
        derive_config(cfg, isotropic_stats(cfg)).jumprelu_bandwidth)


def init_threshold(cfg: SAEConfig) -> float:
    return cfg.jumprelu_init_threshold if cfg.jumprelu_init_threshold is not None else (
        derive_config(cfg, isotropic_stats(cfg)).jumprelu_init_threshold)


def penalty_coeff(cfg: SAEConfig) -> float:
    """The JumpReLU sparsity coefficient: l0_coeff, else the derived (or isotropic) default."""
    if cfg.l0_coeff is not None:
        return cfg.l0_coeff
    if cfg.jumprelu_penalty == "l0_target":
        return TARGET_COEFF_PER_VARIANCE * float(cfg.d_in)
    return FALLBACK_PENALTY_COEFF


def sparsity_penalty(
    pre_acts: Float[Array, "B F"], latents: Float[Array, "B F"], threshold: Float[Array, " F"],
    dec_norms: Float[Array, " F"], cfg: SAEConfig,
) -> Float[Array, ""]:
    """The penalty before its coefficient (the step multiplies by l0_coeff)."""
    eps = bandwidth(cfg)
    if cfg.jumprelu_penalty == "tanh":
        # tanh(c · f_i ‖W_dec,i‖): a smooth, saturating stand-in for L0 (Anthropic, Jan 2025).
        return jnp.mean(jnp.sum(jnp.tanh(cfg.tanh_scale * latents * dec_norms[None, :]), axis=-1))
    if cfg.jumprelu_penalty == "l0":
        return jnp.mean(jnp.sum(heaviside_step(pre_acts, threshold, eps), axis=-1))
    l0 = jnp.mean(jnp.sum(heaviside_step(pre_acts, threshold, eps), axis=-1))
    return jnp.square(l0 / jnp.float32(cfg.effective_target_l0) - 1.0)


def pre_act_loss(
    pre_acts: Float[Array, "B F"], threshold: Float[Array, " F"], dec_norms: Float[Array, " F"], cfg: SAEConfig
) -> Float[Array, ""]:
    """λ_P · mean_b Σ_i ReLU(θ_i − z_bi) ‖W_dec,i‖ (Anthropic, Jan 2025): every latent below its
    threshold is pulled up a little, so one that stopped firing still gets a gradient."""
    gap = jax.nn.relu(threshold[None, :] - pre_acts)
    return jnp.float32(cfg.pre_act_coeff) * jnp.mean(jnp.sum(gap * dec_norms[None, :], axis=-1))
