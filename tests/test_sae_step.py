"""The pure sharded train step: every architecture, every mesh shape, same result as one device."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdict.sae.config import SAEConfig
from jaxdict.train.mesh import make_mesh
from jaxdict.train.optim import OptimConfig
from jaxdict.train.state import create_state
from jaxdict.train.step import TrainStep
from jaxdict.testing import planted_dictionary

D_IN, N_FEATURES, BATCH = 16, 64, 32
MESHES = [(1, 1), (8, 1), (1, 8), (2, 4)]

ARCH_CONFIGS = {
    "relu_l1": SAEConfig(arch="relu_l1", d_in=D_IN, n_features=N_FEATURES, l1_coeff=1.0),
    # dead_tokens=1: latents that miss one batch count as dead, so AuxK runs from step 2 on.
    # aux_capacity=F: every dead latent has a slot on every mesh. With more dead than a `model`
    # shard's slots, each shard rotates its own window and meshes differ (sae/auxk.py; that
    # case is tests/test_auxk.py's).
    "topk_sparse": SAEConfig(arch="topk", d_in=D_IN, n_features=N_FEATURES, k=4, dead_tokens=1, decode="sparse",
                             aux_capacity=N_FEATURES),
    "topk_dense": SAEConfig(arch="topk", d_in=D_IN, n_features=N_FEATURES, k=4, dead_tokens=1, decode="dense",
                            aux_capacity=N_FEATURES),
    "batchtopk": SAEConfig(arch="batchtopk", d_in=D_IN, n_features=N_FEATURES, k=4, dead_tokens=1, decode="sparse",
                           aux_capacity=N_FEATURES),
    "batchtopk_dense": SAEConfig(arch="batchtopk", d_in=D_IN, n_features=N_FEATURES, k=4, dead_tokens=1,
                                 decode="dense", aux_capacity=N_FEATURES),
    "jumprelu": SAEConfig(arch="jumprelu", d_in=D_IN, n_features=N_FEATURES, target_l0=6),
    "jumprelu_l0": SAEConfig(arch="jumprelu", d_in=D_IN, n_features=N_FEATURES, l0_coeff=0.05,
                             jumprelu_penalty="l0", jumprelu_bandwidth=0.1, jumprelu_init_threshold=0.1),
    "jumprelu_tanh": SAEConfig(arch="jumprelu", d_in=D_IN, n_features=N_FEATURES, l0_coeff=0.05,
                               jumprelu_penalty="tanh", target_l0=6),
}


def batches(n_steps: int, seed: int = 0) -> np.ndarray:
    planted = planted_dictionary(d_in=D_IN, n_planted=32, seed=seed)
    x, _ = planted.sample(BATCH * n_steps, seed=seed + 1)
    return x.reshape(n_steps, BATCH, D_IN)


# Adam's update g / (|g| + eps) is ill-conditioned where |g| ≈ eps: a latent with a gradient of
# ~1e-8 turns the 1e-9 rounding difference of a sharded vs unsharded sum into a 10 % difference of
# its update (seen for BatchTopK, a latent kept on a single token). eps = 1e-4, far below the
# gradients that matter here (~1e-2), keeps the comparison well-conditioned without hiding a
# sharding error: a wrong collective changes gradients by O(1).
EQUIVALENCE_OPTIM = OptimConfig(lr=1e-2, total_steps=10, sparsity_warmup_frac=0.0, adam_eps=1e-4)


@functools.lru_cache(maxsize=None)
def shared_step(cfg: SAEConfig, optim: OptimConfig, mesh_shape: tuple[int, int]) -> TrainStep:
    """One TrainStep per (config, optimiser, mesh shape) in this process: the tests that step a
    configuration again (another seed or data, the reference of another comparison) reuse its
    traced and compiled program. A fresh TrainStep is a fresh jit, which traces and lowers the step
    again and fetches it from the compilation cache (~1 s on 2 cores, ~20 times in this file)."""
    n = mesh_shape[0] * mesh_shape[1]
    mesh = make_mesh(*mesh_shape, devices=jax.devices()[:n])
    _, shardings = create_state(cfg, optim, mesh, seed=0, input_scale=0.7)
    return TrainStep(cfg, optim, mesh, shardings, BATCH)


def run_steps(cfg: SAEConfig, mesh_shape: tuple[int, int], data: np.ndarray, optim: OptimConfig | None = None,
              seed: int = 3):
    optim = optim or EQUIVALENCE_OPTIM
    step = shared_step(cfg, optim, mesh_shape)
    state, _ = create_state(cfg, optim, step.mesh, seed=seed, input_scale=0.7)
    history = []
    for batch in data:
        state, metrics = step(state, jax.device_put(batch, step.batch_sharding))
        history.append(jax.device_get(metrics))
    return jax.device_get(state), history


@pytest.mark.parametrize("name", list(ARCH_CONFIGS))
def test_sharded_steps_equal_single_device(name, devices):
    cfg = ARCH_CONFIGS[name]
    data = batches(3)
    ref_state, ref_metrics = run_steps(cfg, (1, 1), data)
    assert ref_state.n_nonfinite == 0
    if cfg.arch in ("topk", "batchtopk"):
        # dead_tokens=1 makes most latents dead after one batch: AuxK must have contributed.
        assert ref_metrics[-1]["aux_loss"] > 0
    for mesh_shape in MESHES[1:]:
        state, metrics = run_steps(cfg, mesh_shape, data)
        for path, ref_leaf in jax.tree_util.tree_leaves_with_path(ref_state.params):
            leaf = jax.tree_util.tree_leaves(state.params)[
                [p for p, _ in jax.tree_util.tree_leaves_with_path(state.params)].index(path)
            ]
            np.testing.assert_allclose(leaf, ref_leaf, rtol=2e-5, atol=2e-6, err_msg=f"{name} {mesh_shape} {path}")
        np.testing.assert_array_equal(state.tokens_since_fired, ref_state.tokens_since_fired)
        for step_i, (m, ref_m) in enumerate(zip(metrics, ref_metrics)):
            for key, ref_value in ref_m.items():
                if key == "decode_fallback":
                    continue  # which path ran depends on the mesh (each feature shard offers candidates)
                np.testing.assert_allclose(
                    m[key], ref_value, rtol=2e-5, atol=2e-6, err_msg=f"{name} {mesh_shape} step {step_i} {key}"
                )


@pytest.mark.parametrize("mesh_shape", [(1, 1), (2, 4)])
@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_sparse_and_dense_paths_agree(arch, mesh_shape, devices):
    data = batches(4, seed=5)
    sparse_name = "topk_sparse" if arch == "topk" else "batchtopk"
    sparse_state, sparse_metrics = run_steps(ARCH_CONFIGS[sparse_name], mesh_shape, data)
    dense_state, dense_metrics = run_steps(ARCH_CONFIGS[f"{arch}_dense"], mesh_shape, data)
    for a, b in zip(jax.tree.leaves(sparse_state.params), jax.tree.leaves(dense_state.params)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    np.testing.assert_array_equal(sparse_state.tokens_since_fired, dense_state.tokens_since_fired)
    for m, ref in zip(sparse_metrics, dense_metrics):
        for key in ("l0", "fvu", "aux_loss", "dense_frac"):
            np.testing.assert_allclose(m[key], ref[key], rtol=2e-5, atol=2e-6, err_msg=key)
    if arch == "batchtopk":
        # The comparison means something only if the coordinate-list path itself ran.
        assert any(m["decode_fallback"] == 0 for m in sparse_metrics)


def test_nan_batch_is_skipped_and_counted(devices):
    cfg = ARCH_CONFIGS["topk_sparse"]
    data = batches(3)
    data[1, 5, 3] = np.nan
    optim = OptimConfig(lr=1e-2, total_steps=10)
    mesh = make_mesh(2, 4)
    state, shardings = create_state(cfg, optim, mesh, seed=0)
    step = TrainStep(cfg, optim, mesh, shardings, BATCH)
    state, _ = step(state, jax.device_put(data[0], step.batch_sharding))
    before = jax.device_get(state)
    state, metrics = step(state, jax.device_put(data[1], step.batch_sharding))
    after = jax.device_get(state)
    assert float(metrics["nonfinite"]) == 1.0
    assert int(after.n_nonfinite) == 1 and int(after.consecutive_nonfinite) == 1
    for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(before.tokens_since_fired, after.tokens_since_fired)
    state, metrics = step(state, jax.device_put(data[2], step.batch_sharding))
    assert float(metrics["nonfinite"]) == 0.0
    assert int(state.consecutive_nonfinite) == 0 and int(state.n_nonfinite) == 1


def test_mse_does_not_depend_on_batch_size(devices):
    """The same tokens in a batch of 32 or duplicated into a batch of 64 give the same loss."""
    from jaxdict.sae.losses import sae_loss
    from jaxdict.sae.params import init_params

    cfg = ARCH_CONFIGS["relu_l1"]
    params = init_params(cfg, jax.random.PRNGKey(0))
    x = jnp.asarray(batches(1)[0])
    dead = jnp.zeros((N_FEATURES,), bool)
    one, (_, parts1) = sae_loss(params, x, cfg, None, sparsity_coeff=jnp.float32(1.0), dead=dead)
    two, (_, parts2) = sae_loss(params, jnp.concatenate([x, x]), cfg, None, sparsity_coeff=jnp.float32(1.0), dead=dead)
    np.testing.assert_allclose(one, two, rtol=1e-6)
    np.testing.assert_allclose(parts1["mse"], parts2["mse"], rtol=1e-6)


def test_relu_l1_schedules_follow_anthropic_recipe():
    from jaxdict.train.optim import lr_multiplier, sparsity_multiplier

    cfg = OptimConfig(lr=1.0, total_steps=100, lr_decay_frac=0.2, sparsity_warmup_frac=0.05)
    assert float(sparsity_multiplier(0, cfg)) == pytest.approx(0.2)
    assert float(sparsity_multiplier(4, cfg)) == pytest.approx(1.0)
    assert float(lr_multiplier(50, cfg)) == 1.0
    assert float(lr_multiplier(79, cfg)) == 1.0
    assert float(lr_multiplier(90, cfg)) == pytest.approx(0.5)
    assert float(lr_multiplier(100, cfg)) == pytest.approx(0.0)


def test_relu_l1_init_matches_recipe():
    from jaxdict.sae.params import init_params

    cfg = dataclasses.replace(ARCH_CONFIGS["relu_l1"], dec_init_norm=0.1)
    params = init_params(cfg, jax.random.PRNGKey(1))
    np.testing.assert_allclose(np.linalg.norm(params.W_dec, axis=1), 0.1, rtol=1e-5)
    np.testing.assert_array_equal(params.W_enc, params.W_dec.T)
    assert not np.any(params.b_enc) and not np.any(params.b_dec)


def test_unit_norm_decoder_is_kept(devices):
    state, _ = run_steps(ARCH_CONFIGS["topk_sparse"], (2, 4), batches(3))
    np.testing.assert_allclose(np.linalg.norm(state.params.W_dec, axis=1), 1.0, rtol=1e-5)


def test_batchtopk_learns_an_inference_threshold(devices):
    from jaxdict.sae.forward import forward

    state, metrics = run_steps(ARCH_CONFIGS["batchtopk"], (1, 1), batches(3))
    theta = np.asarray(state.params.threshold)
    assert np.all(theta > 0) and np.all(theta == theta[0])
    x = jnp.asarray(batches(1, seed=9)[0]) * state.input_scale
    out = forward(state.params, x, ARCH_CONFIGS["batchtopk"], None, train=False)
    np.testing.assert_array_equal(np.asarray(out.latents) > 0, np.asarray(out.pre_acts) > theta[0])


def test_batchtopk_sparse_step_under_the_sweep_axis_equals_separate_runs(devices):
    """Stacked runs (the sweep's vmap) take the sparse BatchTopK path per run: the lax.conds inside
    its custom VJP become selects, so both branches run, but the result must stay each run's own."""
    assert_sweep_equals_separate_runs(ARCH_CONFIGS["batchtopk"], batches(3, seed=9))


def assert_sweep_equals_separate_runs(cfg: SAEConfig, data: np.ndarray, seeds: tuple[int, ...] = (3, 4)) -> None:
    """The runs of `seeds` stacked on a sweep axis (2x4 mesh) end with each run's own parameters."""
    from jaxdict.train.state import add_leading_axis, state_specs, to_shardings

    mesh = make_mesh(2, 4)
    separate = [run_steps(cfg, (2, 4), data, seed=seed)[0] for seed in seeds]
    states = [create_state(cfg, EQUIVALENCE_OPTIM, mesh, seed=seed, input_scale=0.7)[0] for seed in seeds]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    shardings = to_shardings(mesh, add_leading_axis(state_specs(cfg, EQUIVALENCE_OPTIM, states[0])))
    stacked = jax.device_put(stacked, shardings)
    step = TrainStep(cfg, EQUIVALENCE_OPTIM, mesh, shardings, BATCH, sweep_size=len(seeds))
    for batch in data:
        stacked, _ = step(stacked, jax.device_put(batch, step.batch_sharding))
    stacked = jax.device_get(stacked)
    for i, alone in enumerate(separate):
        for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(stacked.params)):
            np.testing.assert_allclose(b[i], a, rtol=2e-5, atol=2e-6)

