"""The fused ReLU-L1 loss (jaxdict/sae/relu_l1.py) equals plain jax.grad of the textbook formula:
loss, gradients, metrics, and parameters after several train steps, on one device and on meshes,
under the sweep vmap, and with bf16 compute; and its step keeps at most ~two [B, F] buffers."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdict.train.step as step_module
from jaxdict.sae.config import SAEConfig
from jaxdict.sae.forward import ForwardOutput
from jaxdict.sae.losses import sae_loss
from jaxdict.sae.params import init_params
from jaxdict.train.mesh import make_mesh
from jaxdict.train.optim import OptimConfig
from jaxdict.train.state import add_leading_axis, create_state, state_specs, to_shardings
from jaxdict.train.step import TrainStep

D_IN, N_FEATURES = 16, 64
MESHES = [(1, 1), (2, 4), (8, 1), (1, 8)]
# As in test_sae_step.py: eps = 1e-4 keeps Adam's g / (|g| + eps) well-conditioned, so rounding
# differences of a reordered sum stay rounding differences in the parameters.
OPTIM = OptimConfig(lr=1e-2, total_steps=10, sparsity_warmup_frac=0.0, adam_eps=1e-4)


def reference_loss(params, x, cfg, mesh, *, sparsity_coeff, dead, step=None, aux_demand=None):
    """ReLU-L1 written out, differentiated by jax.grad (what sae_loss computed before the fusion).
    Takes sae_loss's whole signature, since run_steps substitutes it for sae_loss in the step."""
    del mesh, dead, step, aux_demand
    cdt = jnp.dtype(cfg.compute_dtype)
    z = jnp.dot(x.astype(cdt), params.W_enc.astype(cdt), preferred_element_type=jnp.float32) + params.b_enc
    f = jax.nn.relu(z)
    x_hat = jnp.dot(f.astype(cdt), params.W_dec.astype(cdt), preferred_element_type=jnp.float32) + params.b_dec
    mse = jnp.mean(jnp.sum(jnp.square(x - x_hat), axis=-1))
    penalty = jnp.mean(f @ jnp.linalg.norm(params.W_dec, axis=-1))
    active = f > 0
    out = ForwardOutput(x_hat=x_hat, pre_acts=z, latents=f, top_values=None, top_indices=None,
                        fire_counts=jnp.sum(active, axis=0, dtype=jnp.float32),
                        l0=jnp.sum(active, axis=-1).astype(jnp.float32), batch_threshold=jnp.zeros((), jnp.float32))
    return mse + sparsity_coeff * penalty, (out, {"mse": mse, "sparsity_loss": penalty})


def problem(batch: int, compute_dtype: str = "float32", seed: int = 0):
    cfg = SAEConfig(arch="relu_l1", d_in=D_IN, n_features=N_FEATURES, l1_coeff=1.0, compute_dtype=compute_dtype)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = init_params(cfg, k1)
    # Biases away from zero: some latents fire on most tokens, some on none.
    params = params.replace(b_enc=0.3 * jax.random.normal(k2, (N_FEATURES,), jnp.float32),
                            b_dec=0.1 * jnp.ones((D_IN,), jnp.float32))
    x = jax.random.normal(k3, (batch, D_IN), jnp.float32)
    return cfg, params, x


def loss_and_grads(loss_fn, cfg, params, x):
    def f(p):
        return loss_fn(p, x, cfg, None, sparsity_coeff=jnp.float32(0.7), dead=jnp.zeros((N_FEATURES,), bool))
    return jax.jit(jax.value_and_grad(f, has_aux=True))(params)


# 256 rows: four 64-row blocks of the in-place relu loop; 200: 25 blocks of 8; 7: 7 blocks of 1.
@pytest.mark.parametrize("batch", [256, 200, 7])
def test_loss_grads_and_counts_equal_autodiff(batch):
    cfg, params, x = problem(batch)
    (loss, (out, parts)), grads = loss_and_grads(sae_loss, cfg, params, x)
    (ref_loss, (ref_out, ref_parts)), ref_grads = loss_and_grads(reference_loss, cfg, params, x)
    counts = np.asarray(ref_out.fire_counts)
    assert 0 < (counts == 0).sum() and 0 < (counts == batch).sum() + (counts > batch / 2).sum()
    np.testing.assert_array_equal(out.fire_counts, ref_out.fire_counts)
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-6)
    for k in ("mse", "sparsity_loss"):
        np.testing.assert_allclose(parts[k], ref_parts[k], rtol=2e-6, err_msg=k)
    np.testing.assert_allclose(out.x_hat, ref_out.x_hat, rtol=2e-6, atol=2e-6)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        g, ref = np.asarray(getattr(grads, name)), np.asarray(getattr(ref_grads, name))
        np.testing.assert_allclose(g, ref, rtol=2e-5, atol=2e-7 * np.abs(ref).max(), err_msg=name)


def test_bf16_compute_equals_autodiff():
    """bf16 operands: the same casts and the same bf16 rounding of each backward product as autodiff.
    The f32 accumulation order of a dot may differ, so a product that lands on a bf16 rounding
    boundary can come out one bf16 ulp (2^-8 relative) apart."""
    cfg, params, x = problem(256, "bfloat16")
    (loss, (out, parts)), grads = loss_and_grads(sae_loss, cfg, params, x)
    (ref_loss, (ref_out, _)), ref_grads = loss_and_grads(reference_loss, cfg, params, x)
    np.testing.assert_array_equal(out.fire_counts, ref_out.fire_counts)
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-6)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        g, ref = np.asarray(getattr(grads, name)), np.asarray(getattr(ref_grads, name))
        close = np.isclose(g, ref, rtol=2e-5, atol=2e-7 * np.abs(ref).max())
        one_ulp = np.isclose(g, ref, rtol=2.0**-8, atol=0)
        assert np.all(close | one_ulp), name
        assert close.mean() > 0.99, (name, close.mean())


def run_steps(loss_fn, mesh_shape, data, monkeypatch, compute_dtype="float32", sweep_lambdas=None):
    monkeypatch.setattr(step_module, "sae_loss_and_grads", jax.value_and_grad(loss_fn, has_aux=True))
    cfg = SAEConfig(arch="relu_l1", d_in=D_IN, n_features=N_FEATURES, l1_coeff=1.0, compute_dtype=compute_dtype)
    mesh = make_mesh(*mesh_shape, devices=jax.devices()[: mesh_shape[0] * mesh_shape[1]])
    if sweep_lambdas is None:
        state, shardings = create_state(cfg, OPTIM, mesh, seed=3, input_scale=0.7)
        step = TrainStep(cfg, OPTIM, mesh, shardings, data.shape[1])
    else:
        states = [create_state(cfg, OPTIM, mesh, seed=3 + i, input_scale=0.7,
                               hparams={"lr": OPTIM.lr, "sparsity_coeff": lam})[0]
                  for i, lam in enumerate(sweep_lambdas)]
        shardings = to_shardings(mesh, add_leading_axis(state_specs(cfg, OPTIM, states[0])))
        state = jax.jit(lambda *s: jax.tree.map(lambda *a: jnp.stack(a), *s), out_shardings=shardings)(*states)
        step = TrainStep(cfg, OPTIM, mesh, shardings, data.shape[1], sweep_size=len(sweep_lambdas))
    history = []
    for batch in data:
        state, metrics = step(state, jax.device_put(batch, step.batch_sharding))
        history.append(jax.device_get(metrics))
    monkeypatch.undo()
    return jax.device_get(state), history


def assert_same_run(state, history, ref_state, ref_history, label):
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        np.testing.assert_allclose(getattr(state.params, name), getattr(ref_state.params, name),
                                   rtol=2e-5, atol=2e-6, err_msg=f"{label} {name}")
    np.testing.assert_array_equal(state.tokens_since_fired, ref_state.tokens_since_fired, err_msg=label)
    np.testing.assert_array_equal(state.n_nonfinite, ref_state.n_nonfinite)
    for i, (m, ref) in enumerate(zip(history, ref_history)):
        for k in ("l0", "dense_frac", "dead_frac"):  # counts: exact
            np.testing.assert_array_equal(m[k], ref[k], err_msg=f"{label} step {i} {k}")
        for k in ("loss", "mse", "sparsity_loss", "fvu", "grad_norm"):
            np.testing.assert_allclose(m[k], ref[k], rtol=2e-5, err_msg=f"{label} step {i} {k}")


def planted_batches(n_steps: int, batch: int) -> np.ndarray:
    from jaxdict.testing import planted_dictionary

    planted = planted_dictionary(d_in=D_IN, n_planted=32, seed=0)
    x, _ = planted.sample(batch * n_steps, seed=1)
    return x.reshape(n_steps, batch, D_IN)


def test_train_steps_equal_reference_on_every_mesh(devices, monkeypatch):
    # 512 rows: 64 per device on the 8-way data mesh, so every mesh runs several relu blocks.
    data = planted_batches(4, 512)
    ref_state, ref_history = run_steps(reference_loss, (1, 1), data, monkeypatch)
    assert 0 < ref_history[-1]["l0"] < N_FEATURES and ref_history[0]["dense_frac"] > 0
    for mesh_shape in MESHES:
        state, history = run_steps(sae_loss, mesh_shape, data, monkeypatch)
        assert_same_run(state, history, ref_state, ref_history, f"mesh {mesh_shape}")


@pytest.mark.parametrize("mesh_shape", [(1, 1), (2, 4)])
def test_sweep_vmap_equals_reference(devices, monkeypatch, mesh_shape):
    data = planted_batches(3, 128)
    lambdas = [0.3, 3.0]
    ref_state, ref_history = run_steps(reference_loss, (1, 1), data, monkeypatch, sweep_lambdas=lambdas)
    state, history = run_steps(sae_loss, mesh_shape, data, monkeypatch, sweep_lambdas=lambdas)
    assert not np.allclose(ref_history[-1]["l0"][0], ref_history[-1]["l0"][1])
    assert_same_run(state, history, ref_state, ref_history, f"sweep mesh {mesh_shape}")


def test_step_keeps_two_batch_by_feature_buffers(devices):
    """The point of the fusion (relu_l1.py docstring): z dies into f, df into dz, no [B, F] mask.
    Autodiff kept 3.2 [B, F] buffers of temporaries here; the fused step needs two."""
    B, d, F = 1024, 32, 4096
    cfg = SAEConfig(arch="relu_l1", d_in=d, n_features=F)
    mesh = make_mesh(1, 1, devices=jax.devices()[:1])
    state, shardings = create_state(cfg, OPTIM, mesh)
    step = TrainStep(cfg, OPTIM, mesh, shardings, B)
    batch = jax.device_put(np.zeros((B, d), np.float32), step.batch_sharding)
    temp = step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes
    assert temp < 2.5 * B * F * 4, temp / (B * F * 4)
