"""Loading SAEs from training checkpoints, SAELens folders and Gemma Scope npz; export round trips.

`write_run` writes a run folder through `jaxdict.run_layout` (config.json + checkpoints) from an SAE
really trained for a few steps; other eval tests import it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdict.sae.config import SAEConfig
from jaxdict.sae.forward import forward
from jaxdict.sae.io import SAELoadError, export_saelens, load_sae
from jaxdict.sae.params import fold_input_scale
from jaxdict.testing import planted_dictionary


def train_params(cfg: SAEConfig, x: np.ndarray, steps: int, seed: int = 0):
    """(params trained on x·input_scale, input_scale) after `steps` Adam steps on 1 device."""
    from jaxdict.train.mesh import make_mesh
    from jaxdict.train.optim import OptimConfig
    from jaxdict.train.state import create_state
    from jaxdict.train.step import TrainStep

    mesh = make_mesh(data=1, model=1, devices=jax.devices()[:1])
    scale = float(np.sqrt(cfg.d_in / np.mean(np.sum(x.astype(np.float64) ** 2, axis=-1))))
    optim = OptimConfig(lr=3e-3, total_steps=steps)
    state, shardings = create_state(cfg, optim, mesh, seed=seed, input_scale=scale)
    batch = 64
    step = TrainStep(cfg, optim, mesh, shardings, batch)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        rows = rng.integers(0, len(x), batch)
        state, _ = step(state, jax.device_put(x[rows], step.batch_sharding))
    return jax.tree.map(jnp.asarray, jax.device_get(state.params)), float(state.input_scale)


def write_run(run_dir: Path, cfg: SAEConfig, params, input_scale: float, steps=(10,),
              model="gemma3-270m", hook="resid_post.9", store="unused") -> Path:
    """A run folder in the driver's layout (`run_layout`); each listed step holds the same params
    (the state item holds only the step: the evaluator never reads it)."""
    from jaxdict import run_layout

    run_dir.mkdir(parents=True, exist_ok=True)
    doc = {"sae": dataclasses.asdict(cfg),
           "data": {"store": store, "model": model, "hook": hook, "d_in": cfg.d_in}}
    (run_dir / run_layout.CONFIG_FILE).write_text(json.dumps(doc))
    item = run_layout.params_item(jax.tree.map(jnp.asarray, params), jnp.float32(input_scale))
    manager = run_layout.make_manager(run_dir, keep=len(steps), async_save=False)
    for s in steps:
        run_layout.save(manager, s, item, {"step": jnp.int32(s)}, {}, doc)
    manager.wait_until_finished()
    manager.close()
    return run_dir


@pytest.fixture(scope="module")
def planted():
    return planted_dictionary(d_in=16, n_planted=24, mean_active=2.0, seed=0)


@pytest.fixture(scope="module", params=["topk", "relu_l1", "jumprelu", "batchtopk"])
def trained(request, planted):
    arch = request.param
    cfg = SAEConfig(arch=arch, d_in=16, n_features=32, k=4, l1_coeff=1.0, l0_coeff=1e-3)
    x, _ = planted.sample(2048, seed=1)
    params, scale = train_params(cfg, x, steps=30)
    return cfg, params, scale, x


def test_run_folder_loads_folded_params(tmp_path, trained):
    cfg, params, scale, x = trained
    run = write_run(tmp_path / "run", cfg, params, scale, steps=(5, 10))
    sae = load_sae(run)
    assert sae.step == 10 and sae.model == "gemma3-270m" and sae.hook == "resid_post.9"
    assert sae.cfg == cfg
    # Raw-unit encode equals the training forward on x·scale; decode returns raw units.
    out = forward(params, jnp.asarray(x[:64]) * jnp.float32(scale), cfg, train=False)
    f = np.asarray(sae.encode(x[:64]))
    ref_f = np.asarray(out.latents if out.latents is not None else
                       jnp.zeros((64, cfg.n_features)).at[jnp.arange(64)[:, None], out.top_indices].set(out.top_values))
    np.testing.assert_allclose(f, ref_f, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(sae.decode(f)), np.asarray(out.x_hat) / scale, rtol=1e-4, atol=1e-4)
    assert np.mean(np.asarray(sae.encode(x[:64])) > 0) > 0  # really fires
    # Leading axes are kept.
    assert sae.encode(x[:12].reshape(3, 4, 16)).shape == (3, 4, 32)


def test_named_step_and_missing_step(tmp_path, trained):
    cfg, params, scale, _ = trained
    run = write_run(tmp_path / "run", cfg, params, scale, steps=(5, 10))
    assert load_sae(run, step=5).step == 5
    with pytest.raises(SAELoadError, match=r"step 7 was never saved.*\[5, 10\]"):
        load_sae(run, step=7)


def test_export_reimport_same_encode_decode(tmp_path, trained):
    cfg, params, scale, x = trained
    sae = load_sae(write_run(tmp_path / "run", cfg, params, scale))
    sae = sae.with_max_activations(np.arange(cfg.n_features, dtype=np.float32))
    folder = export_saelens(sae, tmp_path / "export")
    doc = json.loads((folder / "cfg.json").read_text())
    assert doc["d_in"] == 16 and doc["d_sae"] == 32 and doc["normalize_activations"] == "none"
    assert doc["metadata"]["hook_name"] == "blocks.9.hook_resid_post"
    assert doc["apply_b_dec_to_input"] == (cfg.arch != "relu_l1")
    back = load_sae(folder)
    assert back.cfg == cfg and back.hook == "resid_post.9" and back.model == "gemma3-270m"
    np.testing.assert_array_equal(back.max_activations, sae.max_activations)
    np.testing.assert_allclose(np.asarray(back.encode(x[:128])), np.asarray(sae.encode(x[:128])), atol=1e-5)
    f = sae.encode(x[:128])
    np.testing.assert_allclose(np.asarray(back.decode(f)), np.asarray(sae.decode(f)), atol=1e-5)


def test_saelens_without_jaxdict_block_and_b_dec_convention(tmp_path, planted):
    """A third-party SAELens 'standard' SAE subtracts b_dec before encoding; we must agree."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    d, F = 16, 40
    W_enc = rng.normal(size=(d, F)).astype(np.float32)
    b_enc = rng.normal(size=F).astype(np.float32)
    W_dec = rng.normal(size=(F, d)).astype(np.float32)
    b_dec = rng.normal(size=d).astype(np.float32)
    folder = tmp_path / "saelens"
    folder.mkdir()
    save_file({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": d, "d_sae": F, "apply_b_dec_to_input": True,
        "normalize_activations": "none", "model_name": "google/gemma-3-270m",
        "hook_name": "blocks.3.hook_resid_post"}))
    sae = load_sae(folder)
    assert sae.cfg.arch == "relu_l1" and sae.model == "gemma3-270m" and sae.hook == "resid_post.3"
    x, _ = planted.sample(32, seed=3)
    want_f = np.maximum((x - b_dec) @ W_enc + b_enc, 0)
    np.testing.assert_allclose(np.asarray(sae.encode(x)), want_f, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(sae.decode(want_f)), want_f @ W_dec + b_dec, rtol=1e-4, atol=1e-3)

    (folder / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": d, "d_sae": F,
                                                "normalize_activations": "expected_average_only_in"}))
    with pytest.raises(SAELoadError, match="normalize_activations='expected_average_only_in'"):
        load_sae(folder)
    (folder / "cfg.json").write_text(json.dumps({"architecture": "gated", "d_in": d, "d_sae": F}))
    with pytest.raises(SAELoadError, match="architecture 'gated' is not supported"):
        load_sae(folder)


def test_gemma_scope_npz(tmp_path, planted):
    rng = np.random.default_rng(1)
    d, F = 16, 48
    arrays = {"W_enc": rng.normal(size=(d, F)), "b_enc": rng.normal(size=F) * 0.1,
              "W_dec": rng.normal(size=(F, d)), "b_dec": rng.normal(size=d),
              "threshold": np.abs(rng.normal(size=F))}
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    path = tmp_path / "layer_9" / "width_16k" / "params.npz"
    path.parent.mkdir(parents=True)
    np.savez(path, **arrays)
    sae = load_sae(path)
    assert sae.cfg.arch == "jumprelu" and sae.hook == "resid_post.9"
    x, _ = planted.sample(64, seed=4)
    z = x @ arrays["W_enc"] + arrays["b_enc"]  # Gemma Scope: no pre-encoder bias
    want = z * (z > arrays["threshold"])
    np.testing.assert_allclose(np.asarray(sae.encode(x)), want, rtol=1e-4, atol=1e-4)
    # And it survives a SAELens round trip.
    back = load_sae(export_saelens(sae, tmp_path / "exp"))
    np.testing.assert_allclose(np.asarray(back.encode(x)), want, rtol=1e-4, atol=1e-4)


def test_bad_paths_and_model_mismatch(tmp_path, trained):
    with pytest.raises(SAELoadError, match="no SAE at"):
        load_sae(tmp_path / "nothing")
    cfg, params, scale, x = trained
    sae = load_sae(write_run(tmp_path / "run", cfg, params, scale))
    with pytest.raises(ValueError, match="hook 'resid_post.9'.*'resid_post.4'"):
        sae.check_compatible("gemma3-270m", "resid_post.4", "store")
    with pytest.raises(ValueError, match=r"feature index 32 out of range; valid: 0..31"):
        sae.check_feature(32)


def test_loads_onto_eight_device_mesh(tmp_path, trained, devices):
    from jax.sharding import Mesh

    cfg, params, scale, x = trained
    mesh = Mesh(np.asarray(devices).reshape(2, 4), ("data", "model"))
    run = write_run(tmp_path / "run", cfg, params, scale)
    sharded = load_sae(run, mesh=mesh)
    assert sharded.params.W_enc.sharding.spec == jax.sharding.PartitionSpec(None, "model")
    np.testing.assert_allclose(np.asarray(sharded.encode(x[:32])), np.asarray(load_sae(run).encode(x[:32])),
                               atol=1e-5)


def test_evaluator_imports_no_training_code():
    """DESIGN §2: evaluation loads checkpoints without optax, grain or jaxdict.train."""
    code = ("import sys, jaxdict, jaxdict.sae.io, jaxdict.sae.inference, jaxdict.evaluate.metrics, "
            "jaxdict.evaluate.spliced, jaxdict.evaluate.heldout, jaxdict.evaluate.report, "
            "jaxdict.evaluate.explorer, jaxdict.evaluate.dashboard, jaxdict.evaluate.feature_pages, "
            "jaxdict.evaluate.steering, jaxdict.evaluate.steering_report, jaxdict.commands.eval, "
            "jaxdict.commands.features, jaxdict.commands.steer, jaxdict.commands.export\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('optax', 'grain') "
            "or m.startswith('jaxdict.train') or m.startswith('jaxdict.data'))\n"
            "print(bad); assert not bad, bad")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_loads_checkpoint_written_by_training_driver_on_eight_devices(tmp_path, planted, devices):
    """A state sharded over a 2×4 mesh, saved by jaxdict.train.checkpoint, loads onto one device."""
    from jaxdict.train import checkpoint
    from jaxdict.train.mesh import make_mesh
    from jaxdict.train.optim import OptimConfig
    from jaxdict.train.state import create_state
    from jaxdict.train.step import TrainStep

    cfg = SAEConfig(arch="batchtopk", d_in=16, n_features=32, k=4)
    optim = OptimConfig(lr=3e-3, total_steps=5)
    mesh = make_mesh(data=2, model=4)
    state, shardings = create_state(cfg, optim, mesh, seed=0, input_scale=0.7)
    step = TrainStep(cfg, optim, mesh, shardings, 64)
    x, _ = planted.sample(64 * 5, seed=2)
    for i in range(5):
        state, _ = step(state, jax.device_put(x[i * 64:(i + 1) * 64], step.batch_sharding))
    doc = {"sae": dataclasses.asdict(cfg), "data": {"store": "s", "model": "gemma3-270m", "hook": "resid_post.2",
                                                      "d_in": 16, "eval_fraction": 0.05}}
    (tmp_path / "config.json").write_text(json.dumps(doc))
    manager = checkpoint.make_manager(tmp_path)
    checkpoint.save(manager, 5, state, {"position": 0}, doc)
    manager.wait_until_finished()
    manager.close()
    sae = load_sae(tmp_path)
    assert sae.step == 5 and sae.hook == "resid_post.2" and sae.extra["eval_fraction"] == 0.05
    assert len(sae.params.W_enc.devices()) == 1
    params = jax.device_get(state.params)
    want = forward(jax.tree.map(jnp.asarray, params), jnp.asarray(x[:32]) * jnp.float32(0.7), cfg, train=False)
    np.testing.assert_allclose(np.asarray(sae.encode(x[:32])), np.asarray(want.latents), rtol=1e-4, atol=1e-5)
