"""SAE maths: sharded top-k, the JumpReLU estimator, recovery of a planted dictionary, bad configs."""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdict.sae import jumprelu_recipe, sharded_ops
from jaxdict.sae.config import ConfigError, SAEConfig
from jaxdict.sae.forward import forward
from jaxdict.sae.jumprelu import heaviside_step, jumprelu
from jaxdict.sae.params import fold_input_scale, init_params
from jaxdict.testing import mean_max_cosine, planted_dictionary
from jaxdict.train.mesh import make_mesh
from jaxdict.train.optim import OptimConfig
from jaxdict.train.state import create_state
from jaxdict.train.step import TrainStep


@pytest.mark.parametrize("mesh_shape", [(1, 8), (2, 4), (8, 1)])
def test_sharded_topk_equals_unsharded(mesh_shape, devices):
    z = jax.random.normal(jax.random.PRNGKey(0), (16, 256))
    mesh = make_mesh(*mesh_shape)
    z_sharded = jax.device_put(z, NamedSharding(mesh, P("data", "model")))
    for k in (1, 7, 32, 40):
        values, indices = jax.jit(lambda a: sharded_ops.global_topk(a, k, mesh))(z_sharded)
        ref_values, ref_indices = jax.lax.top_k(z, k)
        np.testing.assert_array_equal(values, ref_values)
        np.testing.assert_array_equal(indices, ref_indices)
    cutoff = jax.jit(lambda a: sharded_ops.global_kth_largest(a, 16 * 5, mesh))(z_sharded)
    assert float(cutoff) == float(jnp.sort(z.reshape(-1))[-16 * 5])


def test_sharded_sparse_decode_and_gather_match_dense(devices):
    mesh = make_mesh(2, 4)
    key = jax.random.PRNGKey(1)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    W_dec = jax.random.normal(k1, (64, 8))
    W_enc = jax.random.normal(k2, (8, 64))
    b_enc = jax.random.normal(k3, (64,))
    x = jax.random.normal(k4, (4, 8))
    indices = jnp.array([[0, 17, 63], [5, 16, 40], [1, 2, 3], [60, 31, 32]], jnp.int32)
    values = jnp.arange(12, dtype=jnp.float32).reshape(4, 3)
    decoded = jax.jit(lambda v, i, w: sharded_ops.sharded_sparse_decode(v, i, w, mesh))(values, indices, W_dec)
    dense = jnp.zeros((4, 64)).at[jnp.arange(4)[:, None], indices].set(values) @ W_dec
    np.testing.assert_allclose(decoded, dense, rtol=1e-5, atol=1e-5)
    full = x @ W_enc + b_enc
    gathered = jax.jit(lambda *a: sharded_ops.sharded_gather_preacts(*a, mesh))(x, W_enc, b_enc, indices, full)
    np.testing.assert_allclose(gathered, jnp.take_along_axis(full, indices, axis=1), rtol=1e-5, atol=1e-5)

    # The hand-written sparse backward passes equal autodiff through the dense maths.
    weights = jax.random.normal(jax.random.PRNGKey(7), (4, 3))

    def sparse_objective(x_, W_enc_, b_enc_, W_dec_):
        z = jax.lax.stop_gradient(x_ @ W_enc_ + b_enc_)
        sel = sharded_ops.sharded_gather_preacts(x_, W_enc_, b_enc_, indices, z, mesh)
        out = sharded_ops.sharded_sparse_decode(sel * weights, indices, W_dec_, mesh)
        return jnp.sum(out**2)

    def dense_objective(x_, W_enc_, b_enc_, W_dec_):
        sel = jnp.take_along_axis(x_ @ W_enc_ + b_enc_, indices, axis=1)
        f = jnp.zeros((4, 64)).at[jnp.arange(4)[:, None], indices].set(sel * weights)
        return jnp.sum((f @ W_dec_) ** 2)

    sparse_grads = jax.jit(jax.grad(sparse_objective, argnums=(0, 1, 2, 3)))(x, W_enc, b_enc, W_dec)
    dense_grads = jax.grad(dense_objective, argnums=(0, 1, 2, 3))(x, W_enc, b_enc, W_dec)
    for got, want in zip(sparse_grads, dense_grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_jumprelu_gradients_match_hand_derived_reference():
    """Rajamanoharan et al. 2024 eqs. 11–12 with the rectangle kernel, checked element by element."""
    eps = 0.5
    z = jnp.array([[0.1, 0.9, 1.2, 2.0], [0.8, 1.1, -1.0, 3.0]], jnp.float32)
    theta = jnp.array([1.0, 1.0, 1.0, 1.0], jnp.float32)
    g = jnp.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], jnp.float32)

    def objective(zz, tt):
        return jnp.sum(g * jumprelu(zz, tt, eps))

    dz, dtheta = jax.grad(objective, argnums=(0, 1))(z, theta)
    zn, tn, gn = np.asarray(z), np.asarray(theta), np.asarray(g)
    above = (zn > tn).astype(np.float32)
    kernel = (np.abs((zn - tn) / eps) < 0.5).astype(np.float32)
    np.testing.assert_allclose(dz, gn * above)
    np.testing.assert_allclose(dtheta, np.sum(-(tn / eps) * kernel * gn, axis=0), rtol=1e-6)
    # z = 0.9, 1.2, 0.8, 1.1 lie within ε/2 = 0.25 of θ = 1; 0.1, 2.0, -1.0, 3.0 do not.
    assert kernel.sum() == 4

    def l0(zz, tt):
        return jnp.sum(g * heaviside_step(zz, tt, eps))

    dz0, dtheta0 = jax.grad(l0, argnums=(0, 1))(z, theta)
    np.testing.assert_array_equal(dz0, np.zeros_like(zn))
    np.testing.assert_allclose(dtheta0, np.sum(-(1.0 / eps) * kernel * gn, axis=0), rtol=1e-6)
    np.testing.assert_array_equal(jumprelu(z, theta, eps), zn * above)


RECOVERY = {
    "relu_l1": (SAEConfig(arch="relu_l1", d_in=32, n_features=128, l1_coeff=1.0), 0.90),
    "topk": (SAEConfig(arch="topk", d_in=32, n_features=128, k=3, dead_tokens=6400, decode="sparse"), 0.95),
    "batchtopk": (SAEConfig(arch="batchtopk", d_in=32, n_features=128, k=3, dead_tokens=6400), 0.90),
    "jumprelu_l0": (SAEConfig(arch="jumprelu", d_in=32, n_features=128, jumprelu_penalty="l0", l0_coeff=1.0,
                              jumprelu_bandwidth=0.1, jumprelu_init_threshold=0.1), 0.95),
    # The recipe's only knob, the L0 target (the planted data has ~3 active per token). With θ
    # started where L0 = T and a ×30 θ lr (the previous recipe) it recovered 0.91-0.94 here; the
    # dense start (θ₀ = ε, θ lr ×1) recovers 0.985 (issue 14).
    "jumprelu": (SAEConfig(arch="jumprelu", d_in=32, n_features=128, target_l0=3.0), 0.95),
}
KNOWN_GAPS: dict[str, str] = {}  # architecture -> reason, run as a strict xfail


@pytest.mark.slow
@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[a]))
                                  if a in KNOWN_GAPS else a for a in RECOVERY])
def test_training_recovers_planted_dictionary(arch, devices):
    """64 planted unit features, ~3 active per token, 1% noise: the learned decoder rows must
    contain each planted direction (mean over planted features of the best cosine)."""
    cfg, floor = RECOVERY[arch]
    planted = planted_dictionary(d_in=32, n_planted=64, mean_active=3.0)
    batch, steps = 128, 1000
    x, _ = planted.sample(batch * steps, seed=0)
    scale = math.sqrt(planted.d_in / float(np.mean(np.sum(x**2, axis=-1))))
    optim = OptimConfig(lr=3e-3, total_steps=steps)
    if cfg.arch == "jumprelu":  # ε, θ₀ and the penalty scale from the first batch, as the driver does
        W_enc = np.asarray(init_params(cfg, jax.random.PRNGKey(0)).W_enc)
        stats = jumprelu_recipe.measure_preacts(cfg, W_enc, np.zeros(planted.d_in), x[:batch] * scale)
        cfg = jumprelu_recipe.derive_config(cfg, stats)
    mesh = make_mesh(1, 1, devices=jax.devices()[:1])
    state, shardings = create_state(cfg, optim, mesh, seed=0, input_scale=scale)
    step = TrainStep(cfg, optim, mesh, shardings, batch)
    for i in range(steps):
        state, metrics = step(state, x[i * batch : (i + 1) * batch])
    cos = mean_max_cosine(planted.features, np.asarray(state.params.W_dec))
    print(f"{arch}: mean max cosine {cos:.3f}, fvu {float(metrics['fvu']):.3f}, l0 {float(metrics['l0']):.2f}")
    assert cos >= floor
    assert float(metrics["fvu"]) < 0.15


def test_folded_params_on_raw_inputs_equal_trained_params_on_scaled_inputs():
    for arch in ("relu_l1", "topk", "jumprelu"):
        cfg = SAEConfig(arch=arch, d_in=8, n_features=32, k=4)
        params = init_params(cfg, jax.random.PRNGKey(0))
        params = params.replace(
            b_dec=jax.random.normal(jax.random.PRNGKey(1), (8,)) * 0.3,
            b_enc=jax.random.normal(jax.random.PRNGKey(2), (32,)) * 0.1,
        )
        x = jax.random.normal(jax.random.PRNGKey(3), (5, 8)) * 7.0
        scale = 0.37
        trained = forward(params, x * scale, cfg, None, train=False)
        folded = forward(fold_input_scale(params, scale), x, cfg, None, train=False)
        np.testing.assert_allclose(folded.pre_acts, trained.pre_acts, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(folded.x_hat, trained.x_hat / scale, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(arch="gated"), "unknown SAE architecture 'gated'; valid: relu_l1, topk, batchtopk, jumprelu"),
        (dict(arch="topk", k=64, n_features=64), "SAEConfig.k = 64 with n_features = 64; need 1 <= k < n_features"),
        (dict(arch="topk", k=0), "SAEConfig.k = 0"),
        (dict(l1_coeff=float("nan")), "SAEConfig.l1_coeff = nan is not finite"),
        (dict(aux_coeff=float("inf")), "SAEConfig.aux_coeff = inf is not finite"),
        (dict(d_in=0), "SAEConfig.d_in = 0; must be a positive integer"),
    ],
)
def test_bad_sae_configs_are_refused(kwargs, message):
    with pytest.raises(ConfigError) as info:
        SAEConfig(**kwargs)
    assert message in str(info.value)


def test_bad_optim_config_is_refused():
    with pytest.raises(ConfigError, match="OptimConfig.lr = nan is not finite"):
        OptimConfig(lr=float("nan"))


def test_shapes_that_do_not_shard_are_refused_before_compiling(devices):
    cfg = SAEConfig(arch="topk", d_in=16, n_features=62, k=4)
    optim = OptimConfig()
    mesh = make_mesh(2, 4)
    with pytest.raises(ConfigError, match=r"n_features 62 is not divisible by the mesh's model axis \(4\); use a multiple of 4, e.g. 64"):
        TrainStep(cfg, optim, mesh, None, 32)
    cfg = dataclasses.replace(cfg, n_features=64)
    with pytest.raises(ConfigError, match=r"batch size 31 is not divisible by the mesh's data axis \(2\)"):
        TrainStep(cfg, optim, mesh, None, 31)
    with pytest.raises(ConfigError, match=r"mesh data×model = 4×4 = 16 devices, but only 8 are present; on a CPU, "
                                          r"XLA_FLAGS=--xla_force_host_platform_device_count=16 splits"):
        make_mesh(4, 4)


def test_wrong_input_width_is_refused_before_compiling(devices):
    cfg = SAEConfig(arch="topk", d_in=16, n_features=64, k=4)
    optim = OptimConfig()
    mesh = make_mesh(2, 4)
    state, shardings = create_state(cfg, optim, mesh)
    step = TrainStep(cfg, optim, mesh, shardings, 32)
    with pytest.raises(ConfigError, match="batch has input width 20 but the SAE's d_in is 16"):
        step(state, np.zeros((32, 20), np.float32))


@pytest.mark.parametrize("mesh_shape", [None, (1, 8), (2, 4), (8, 1)])
def test_batchtopk_cutoff_is_exact_with_and_without_the_candidate_shortcut(mesh_shape, devices):
    z = jax.random.normal(jax.random.PRNGKey(4), (16, 64))
    # Row 3 is far denser than the others: its 8 candidates cannot hold all its winners, so it is
    # counted whole; with rows 3, 9 and 12 dense and room for one whole row per device, the
    # bisection over all entries runs. Every path must give the exact cut-off.
    dense_row = z.at[3].add(10.0)
    dense_rows = z.at[jnp.array([3, 9, 12])].add(10.0)
    mesh = None if mesh_shape is None else make_mesh(*mesh_shape)
    for matrix, whole in ((z, 1), (dense_row, 1), (dense_rows, 1), (dense_rows, 16)):
        want = float(jnp.sort(matrix.reshape(-1))[-16 * 2])
        placed = matrix if mesh is None else jax.device_put(matrix, NamedSharding(mesh, P("data", "model")))
        got = jax.jit(lambda a, whole=whole: sharded_ops.global_kth_largest(
            a, 16 * 2, mesh, row_candidates=8, dense_rows=whole))(placed)
        assert float(got) == want


def _batchtopk_dense_reference(x_in, W_enc, b_enc, W_dec, z_fixed, k):
    """The plain BatchTopK maths: keep the B·k largest positive pre-activations, decode densely.
    The selection reads `z_fixed` (the same values the sparse path sees: a matmul outside and inside
    jit may differ in the last bit); the kept values and their gradients come from x_in W_enc + b_enc."""
    cutoff = jnp.sort(z_fixed.reshape(-1))[-z_fixed.shape[0] * k]
    mask = (z_fixed >= cutoff) & (z_fixed > 0)
    return jnp.where(mask, x_in @ W_enc + b_enc, 0.0) @ W_dec, mask, cutoff


@pytest.mark.parametrize("mesh_shape", [None, (1, 8), (2, 4), (8, 1)])
@pytest.mark.parametrize("row_candidates,overflow_rows", [(None, None), (8, 64), (8, 1)])
def test_batchtopk_sparse_equals_dense_maths(mesh_shape, row_candidates, overflow_rows, devices):
    """The coordinate-list decode and its custom backward equal autodiff through the dense maths, in
    all three regimes: every row listed; with k = 8 candidates per row the densest rows (up to 26
    winners) overflow and are decoded densely beside the list; with room for only one such row per
    shard the whole batch must take the dense fallback."""
    from jaxdict.sae.batchtopk_sparse import batchtopk_sparse

    # Shapes where no row has more than 4·k winners and no shard of any mesh overflows its slots
    # (at most 26 winners in a row, 85 in a data shard of 8 rows against 96 slots).
    B, d, F, k = 64, 32, 256, 8
    keys = jax.random.split(jax.random.PRNGKey(7), 4)
    x_in = jax.random.normal(keys[0], (B, d))
    W_enc = jax.random.normal(keys[1], (d, F)) / math.sqrt(d)
    b_enc = 0.1 * jax.random.normal(keys[2], (F,))
    W_dec = jax.random.normal(keys[3], (F, d)) / math.sqrt(F)
    mesh = None if mesh_shape is None else make_mesh(*mesh_shape)
    probe = jax.random.normal(jax.random.PRNGKey(8), (B, d))
    z_fixed = jax.jit(lambda: x_in @ W_enc + b_enc)()

    def sparse_objective(x_, We, be, Wd):
        out = batchtopk_sparse(x_, We, be, Wd, z_fixed, k, mesh, row_candidates=row_candidates,
                               overflow_rows=overflow_rows)
        return jnp.sum(out.x_hat * probe), out

    def dense_objective(x_, We, be, Wd):
        x_hat, mask, cutoff = _batchtopk_dense_reference(x_, We, be, Wd, z_fixed, k)
        return jnp.sum(x_hat * probe), (mask, cutoff)

    args = (x_in, W_enc, b_enc, W_dec)
    (value, out), grads = jax.jit(jax.value_and_grad(sparse_objective, argnums=(0, 1, 2, 3), has_aux=True))(*args)
    (ref_value, (mask, cutoff)), ref_grads = jax.value_and_grad(dense_objective, argnums=(0, 1, 2, 3), has_aux=True)(*args)

    # Each (data, model) block lists its own rows: a row overflows in a block when its winners
    # there fill every candidate the block offered; the batch falls back when a block has more
    # overflowing rows than it may decode densely.
    n_data, n_model = (1, 1) if mesh is None else (mesh.shape["data"], mesh.shape["model"])
    per_block = jnp.sum(mask.reshape(B, n_model, F // n_model), axis=2)  # [B, n_model]
    offered = min(row_candidates or 4 * k, F // n_model)
    overflowing = (per_block >= offered) if offered < F // n_model else jnp.zeros_like(per_block, bool)
    allowed = min(B // n_data, max(overflow_rows or (B // n_data) // 32, 1))
    over_per_block = jnp.sum(overflowing.reshape(n_data, B // n_data, n_model), axis=1)
    assert bool(out.dense_fallback) == bool(jnp.any(over_per_block > allowed))
    if row_candidates is None:
        assert not bool(out.dense_fallback), "the common case must take the sparse path"
    if mesh_shape is None:
        # The unsharded case exercises each regime for certain.
        assert bool(jnp.any(overflowing)) == (row_candidates is not None)
        assert bool(out.dense_fallback) == (overflow_rows == 1)
    assert float(out.cutoff) == float(cutoff)
    np.testing.assert_array_equal(out.fire_counts, jnp.sum(mask, axis=0))
    np.testing.assert_array_equal(out.l0, jnp.sum(mask, axis=1))
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for name, got, want in zip(("x_in", "W_enc", "b_enc", "W_dec"), grads, ref_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_kth_largest_by_bisection_equals_sorting():
    rng = np.random.default_rng(11)
    values = np.concatenate([
        rng.standard_normal(500).astype(np.float32),
        np.repeat(np.float32(0.25), 44),  # ties
        np.array([0.0, -0.0, np.inf, -np.inf, 3e38, -3e38, 1e-45, -1e-45], np.float32),
    ])
    rng.shuffle(values)
    descending = np.sort(values)[::-1]
    for n in (1, 2, 7, 44, 45, 300, len(values) - 1, len(values)):
        got = float(jax.jit(lambda v, n=n: sharded_ops.kth_largest(v, n))(values.reshape(8, -1)))
        assert got == float(descending[n - 1]), n


@pytest.mark.parametrize("arch,k,n_features,sparse", [
    ("topk", 64, 16384, True), ("topk", 256, 16384, True), ("topk", 512, 16384, False),
    ("batchtopk", 64, 16384, True), ("batchtopk", 128, 16384, True), ("batchtopk", 256, 16384, False),
    ("relu_l1", 64, 16384, False),
])
def test_auto_decode_picks_the_path_measured_faster(arch, k, n_features, sparse):
    """"auto" follows the side-by-side CPU measurements quoted in SAEConfig.uses_sparse_decode."""
    cfg = SAEConfig(arch=arch, d_in=640, n_features=n_features, k=k)
    assert cfg.uses_sparse_decode is sparse
    assert dataclasses.replace(cfg, decode="dense").uses_sparse_decode is False
    if arch != "relu_l1":
        assert dataclasses.replace(cfg, decode="sparse").uses_sparse_decode is True
