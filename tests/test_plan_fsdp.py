"""The FSDP sharding mode on 8 fake CPU devices: the same training maths as the model-axis mode,
state split over every device (1/devices per device), and refused shapes named."""
import dataclasses

import jax
import numpy as np
import pytest

from jaxdict.plan.analysis import shard_bytes
from jaxdict.plan.train_plan import estimate_state_bytes, lower_train_step
from jaxdict.sae.config import ARCHITECTURES, ConfigError, SAEConfig
from jaxdict.train.config import DataConfig, MeshConfig, RunConfig
from jaxdict.train.mesh import make_mesh
from jaxdict.train.optim import OptimConfig
from jaxdict.train.state import create_state
from jaxdict.train.step import TrainStep


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fsdp_step_equals_model_axis_step(devices, arch):
    sae = SAEConfig(arch=arch, d_in=32, n_features=256, k=8)
    optim = OptimConfig(total_steps=100)
    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    results = {}
    for shard in ("model", "fsdp"):
        mesh = make_mesh(2, 4, devices=devices)
        state, shardings = create_state(sae, optim, mesh, shard=shard)
        step = TrainStep(sae, optim, mesh, shardings, 64, shard=shard)
        batch = jax.device_put(x, step.batch_sharding)
        for _ in range(2):
            state, metrics = step(state, batch)
        results[shard] = (jax.device_get(state), state.params.W_enc.sharding.spec, float(metrics["loss"]))
    (model_state, model_spec, model_loss), (fsdp_state, fsdp_spec, fsdp_loss) = results["model"], results["fsdp"]
    assert model_spec == jax.sharding.PartitionSpec(None, "model")
    assert fsdp_spec == jax.sharding.PartitionSpec(None, ("model", "data"))
    assert fsdp_loss == pytest.approx(model_loss, rel=1e-6)
    for a, b in zip(jax.tree.leaves(model_state), jax.tree.leaves(fsdp_state)):
        # the same sums in another order (gathered vs local reductions): float32 rounding only
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shard", ["model", "fsdp"])
def test_param_and_optimiser_bytes_fall_as_one_over_devices(devices, shard):
    """Per-device state bytes of the exact step's inputs: 1/n of the whole on n devices (model
    mode: n on the model axis; fsdp: n = data × model, whatever the split)."""
    sae = SAEConfig(arch="jumprelu", d_in=64, n_features=4096)
    totals = {}
    meshes = [(1, 1), (1, 2), (1, 4), (1, 8)] if shard == "model" else [(1, 1), (2, 1), (2, 2), (4, 2), (8, 1)]
    for data, model in meshes:
        cfg = RunConfig(sae=sae, data=DataConfig(source="planted", batch_size=64),
                        mesh=MeshConfig(data=data, model=model, shard=shard))
        _, parts = lower_train_step(cfg, devices[: data * model])
        n = data * model if shard == "fsdp" else model
        totals[(data, model)] = (parts["params"] * n, parts["optimiser state"] * n)
        est = estimate_state_bytes(cfg, data * model, model)
        assert parts["params"] == pytest.approx(est["params"], rel=1e-3)
    whole = totals[(1, 1)]
    assert whole[0] == 4 * (2 * 64 * 4096 + 2 * 4096 + 64)
    for key, value in totals.items():
        assert value[0] == pytest.approx(whole[0], rel=2e-3), key  # b_dec [d_in] is replicated: +d/n
        assert value[1] == pytest.approx(whole[1], rel=2e-3), key


def test_fsdp_refuses_features_not_divisible_by_devices(devices):
    sae = SAEConfig(arch="relu_l1", d_in=16, n_features=4 * 3)
    optim = OptimConfig()
    mesh = make_mesh(2, 4, devices=devices)
    with pytest.raises(ConfigError, match="fsdp splits it over; use a multiple of 8, e.g. 16"):
        TrainStep(sae, optim, mesh, None, 64, shard="fsdp")
    with pytest.raises(ConfigError, match="mesh.shard = 'zero'; valid: model, fsdp"):
        dataclasses.replace(MeshConfig(), shard="zero")


def test_shard_bytes_counts_the_largest_shard(devices):
    mesh = make_mesh(1, 8, devices=devices)
    s = jax.ShapeDtypeStruct((4, 64), np.float32,
                             sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "model")))
    assert shard_bytes(s) == 4 * 8 * 4
