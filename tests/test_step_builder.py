"""`build_train_step`: the abstract state and batch lower to the same program as the arrays the
driver trains with, and the driver trains with exactly that step (compiled once)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdict.sae.config import ConfigError, SAEConfig
from jaxdict.train import driver
from jaxdict.train.config import DataConfig, MeshConfig, RunConfig, RunSettings
from jaxdict.train.mesh import make_mesh
from jaxdict.train.optim import OptimConfig
from jaxdict.train.state import create_state
from jaxdict.train.step_builder import BATCH_DTYPE, build_train_step


def tiny(arch="topk", steps=6, name="r") -> RunConfig:
    return RunConfig(
        sae=SAEConfig(arch=arch, d_in=16, n_features=64, k=4),
        optim=OptimConfig(lr=3e-3, total_steps=steps),
        data=DataConfig(source="planted", batch_size=32, planted_rows=2048, planted_features=32,
                        eval_fraction=0.1, eval_rows=64, slab_rows=64, shuffle_buffer_rows=128),
        mesh=MeshConfig(data=2, model=4),
        run=RunSettings(name=name, log_every=3, checkpoint_every=0, progress=False),
    )


@pytest.mark.parametrize("sweep_size", [None, 2])
def test_abstract_arguments_lower_like_the_real_ones(sweep_size):
    cfg = tiny()
    mesh = make_mesh(2, 4)
    built = build_train_step(cfg, mesh, sweep_size=sweep_size)
    states = [create_state(cfg.sae, cfg.optim, mesh, seed=s)[0] for s in range(sweep_size or 1)]
    state = (jax.jit(lambda *s: jax.tree.map(lambda *x: jnp.stack(x), *s), out_shardings=built.state_shardings)(*states)
             if sweep_size else states[0])
    batch = jax.device_put(np.ones((32, 16), BATCH_DTYPE), built.batch_sharding)
    from_abstract = built.step.lower(built.abstract_state, built.abstract_batch)
    assert from_abstract.as_text() == built.step.lower(state, batch).as_text()
    leaves = jax.tree.leaves(built.abstract_state)
    assert all(isinstance(a.sharding, jax.sharding.NamedSharding) for a in leaves)
    assert built.abstract_state.params.W_enc.shape == ((sweep_size,) if sweep_size else ()) + (16, 64)
    assert tuple(built.abstract_state.params.W_enc.sharding.spec) == ((None,) if sweep_size else ()) + (None, "model")
    assert tuple(built.abstract_batch.sharding.spec) == ("data", None)
    from_abstract.compile()  # an ahead-of-time compile needs no arrays


def test_refuses_shapes_the_mesh_cannot_split():
    cfg = dataclasses.replace(tiny(), data=dataclasses.replace(tiny().data, batch_size=33))
    with pytest.raises(ConfigError, match="batch size 33"):
        build_train_step(cfg, make_mesh(2, 4))
    with pytest.raises(ValueError, match="sweep_size"):
        build_train_step(tiny(), make_mesh(2, 4), sweep_size=1)


def test_driver_trains_with_the_built_step(tmp_path, monkeypatch):
    built_steps = []

    def spy(cfg, mesh, *, sweep_size=None):
        built_steps.append(build_train_step(cfg, mesh, sweep_size=sweep_size))
        return built_steps[-1]

    monkeypatch.setattr(driver, "build_train_step", spy)
    a, b = tiny(name="a"), tiny(name="b")
    b = dataclasses.replace(b, optim=dataclasses.replace(b.optim, lr=1e-3))
    results = driver.train_group([a, b], [str(tmp_path / "a"), str(tmp_path / "b")])
    assert all(r.finished and r.step == 6 for r in results)
    assert len(built_steps) == 1 and built_steps[0].sweep_size == 2
    # six steps ran through this one jitted function, compiled once
    assert built_steps[0].step._jitted._cache_size() == 1
