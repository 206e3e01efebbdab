"""The JumpReLU recipe (jaxdict/sae/jumprelu_recipe.py) against its written formulas, and BatchTopK's
inference-threshold statistic."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdict.sae import jumprelu_recipe
from jaxdict.sae.config import ConfigError, SAEConfig
from jaxdict.sae.forward import forward, smallest_positive_kept
from jaxdict.sae.losses import sae_loss
from jaxdict.sae.params import init_params

EPS = 0.5


def rect(u):
    return (np.abs(u) < 0.5).astype(np.float64)


def small_case(seed=0, B=6, F=5):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(B, F)).astype(np.float32)
    theta = np.full(F, 0.3, np.float32) + rng.uniform(-0.2, 0.2, F).astype(np.float32)
    norms = rng.uniform(0.5, 1.5, F).astype(np.float32)
    return z, theta, norms


def test_l0_target_penalty_gradient_matches_formula():
    """P = (L0/T − 1)², L0 = mean_b Σ_i H(z_bi − θ_i): ∂P/∂θ_i = 2(L0/T − 1)/T · (−1/(ε·B)) Σ_b K((z_bi − θ_i)/ε),
    and no gradient reaches z (Rajamanoharan et al. 2024, eq. 12)."""
    z, theta, norms = small_case()
    cfg = SAEConfig(arch="jumprelu", d_in=4, n_features=5, target_l0=2.0, jumprelu_bandwidth=EPS,
                    jumprelu_init_threshold=0.3)
    f = np.where(z > theta, z, 0)
    value, (dz, dtheta) = jax.value_and_grad(
        lambda zz, tt: jumprelu_recipe.sparsity_penalty(zz, jnp.asarray(f), tt, jnp.asarray(norms), cfg),
        argnums=(0, 1))(jnp.asarray(z), jnp.asarray(theta))
    B, T = z.shape[0], 2.0
    l0 = np.mean(np.sum(z > theta, axis=1))
    assert float(value) == pytest.approx((l0 / T - 1.0) ** 2, rel=1e-6)
    kernel = rect((z - theta) / EPS)
    assert kernel.sum() > 0  # some z lie in the window, so the check can fail
    want = 2.0 * (l0 / T - 1.0) / T * (-1.0 / (EPS * B)) * kernel.sum(axis=0)
    np.testing.assert_allclose(dtheta, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(dz, np.zeros_like(z))


def test_pre_act_loss_gradient_matches_formula():
    """λ_P · mean_b Σ_i ReLU(θ_i − z_bi) n_i: ∂/∂θ_i = λ_P/B Σ_b 1{z_bi < θ_i} n_i, ∂/∂z_bi = −λ_P/B 1{z_bi < θ_i} n_i."""
    z, theta, norms = small_case(1)
    cfg = SAEConfig(arch="jumprelu", d_in=4, n_features=5, target_l0=2.0, pre_act_coeff=0.25)
    value, (dz, dtheta) = jax.value_and_grad(
        lambda zz, tt: jumprelu_recipe.pre_act_loss(zz, tt, jnp.asarray(norms), cfg), argnums=(0, 1))(
        jnp.asarray(z), jnp.asarray(theta))
    below = (z < theta).astype(np.float64)
    B = z.shape[0]
    assert float(value) == pytest.approx(0.25 * np.mean(np.sum(np.maximum(theta - z, 0) * norms, axis=1)), rel=1e-6)
    np.testing.assert_allclose(dtheta, 0.25 / B * np.sum(below * norms, axis=0), rtol=1e-6)
    np.testing.assert_allclose(dz, -0.25 / B * below * norms, rtol=1e-6)


def test_whole_loss_threshold_gradient_matches_formula():
    """∂loss/∂θ_i for the full JumpReLU loss: the reconstruction's straight-through term
    Σ_b −(θ_i/ε) K((z_bi − θ_i)/ε) · ∂MSE/∂f_bi with ∂MSE/∂f_bi = (2/B) (x̂_b − x_b)·W_dec,i, plus c times
    the penalty's and the pre-activation loss's terms above."""
    d, F, B = 6, 8, 16
    cfg = SAEConfig(arch="jumprelu", d_in=d, n_features=F, target_l0=3.0, jumprelu_bandwidth=EPS,
                    jumprelu_init_threshold=0.2, pre_act_coeff=0.01)
    params = init_params(cfg, jax.random.PRNGKey(0))
    rng = np.random.default_rng(3)
    params = params.replace(threshold=jnp.asarray(rng.uniform(0.1, 0.6, F), jnp.float32),
                            b_dec=jnp.asarray(rng.normal(size=d) * 0.1, jnp.float32))
    x = jnp.asarray(rng.normal(size=(B, d)), jnp.float32)
    c = 2.5
    grads = jax.grad(lambda p: sae_loss(p, x, cfg, None, sparsity_coeff=jnp.float32(c),
                                        dead=jnp.zeros(F, bool))[0])(params)
    P = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    xn = np.asarray(x, np.float64)
    z = (xn - P.b_dec) @ P.W_enc + P.b_enc
    th = P.threshold
    f = np.where(z > th, z, 0.0)
    x_hat = f @ P.W_dec + P.b_dec
    dmse_df = (2.0 / B) * (x_hat - xn) @ P.W_dec.T
    kernel = rect((z - th) / EPS)
    assert kernel.sum() > 0
    mse_term = np.sum(-(th / EPS) * kernel * dmse_df, axis=0)
    l0 = np.mean(np.sum(z > th, axis=1))
    penalty_term = c * 2.0 * (l0 / 3.0 - 1.0) / 3.0 * (-1.0 / (EPS * B)) * kernel.sum(axis=0)
    norms = np.linalg.norm(P.W_dec, axis=1)
    pre_act_term = 0.01 / B * np.sum((z < th) * norms, axis=0)
    np.testing.assert_allclose(grads.threshold, mse_term + penalty_term + pre_act_term, rtol=2e-4, atol=1e-6)


def test_derived_scales_start_dense_with_theta_at_the_kernel_width():
    rng = np.random.default_rng(0)
    d, F, T = 16, 256, 8.0
    x = rng.normal(size=(2048, d)) * 3.0 + 5.0
    cfg = SAEConfig(arch="jumprelu", d_in=d, n_features=F, target_l0=T)
    W_enc = np.asarray(init_params(cfg, jax.random.PRNGKey(0)).W_enc)
    b_dec = x.mean(axis=0)
    stats = jumprelu_recipe.measure_preacts(cfg, W_enc, b_dec, x)
    derived = jumprelu_recipe.derive_config(cfg, stats)
    z = (x - b_dec) @ W_enc
    assert derived.jumprelu_bandwidth == pytest.approx(0.1 * np.std(z), rel=1e-6)
    # θ₀ = ε (Gemma Scope's θ₀ = ε): a dense start, about half the latents fire on each row
    assert derived.jumprelu_init_threshold == derived.jumprelu_bandwidth
    assert 0.4 * F < np.mean(np.sum(z > derived.jumprelu_init_threshold, axis=1)) < 0.5 * F
    # E‖x − μ‖² = 9·d for this data; the coefficient is 10× that.
    assert derived.l0_coeff == pytest.approx(10 * 9.0 * d, rel=0.05)
    # Explicit values are kept.
    fixed = dataclasses.replace(cfg, jumprelu_bandwidth=0.3, l0_coeff=2.0)
    kept = jumprelu_recipe.derive_config(fixed, stats)
    assert (kept.jumprelu_bandwidth, kept.l0_coeff) == (0.3, 2.0)


def test_bad_target_is_refused():
    with pytest.raises(ConfigError, match="target_l0 = 300"):
        SAEConfig(arch="jumprelu", d_in=8, n_features=256, target_l0=300)
    with pytest.raises(ConfigError, match="jumprelu_penalty"):
        SAEConfig(arch="jumprelu", jumprelu_penalty="quadratic")


def test_batchtopk_statistic_is_the_smallest_positive_kept_activation():
    z = jnp.asarray([[0.5, -1.0, 0.2], [-0.3, 0.9, -2.0]], jnp.float32)
    # B·k = 4 slots but only 3 positive values: the cut-off is −0.3, every positive value is kept,
    # and the statistic is their minimum 0.2 (max(cut-off, 0) = 0 would drag the EMA to 0).
    assert float(smallest_positive_kept(z, jnp.float32(-0.3))) == pytest.approx(0.2)
    assert float(smallest_positive_kept(z, jnp.float32(0.5))) == pytest.approx(0.5)
    assert np.isinf(float(smallest_positive_kept(-jnp.abs(z), jnp.float32(-0.3))))
    cfg = SAEConfig(arch="batchtopk", d_in=4, n_features=16, k=12, decode="dense")
    params = init_params(cfg, jax.random.PRNGKey(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4)), jnp.float32)
    out = forward(params, x, cfg, None, train=True)
    kept = np.asarray(out.latents)
    assert float(out.batch_threshold) == pytest.approx(kept[kept > 0].min())
