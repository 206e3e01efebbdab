"""The planner compiles what `jaxdict train` runs: the StableHLO it lowers for a config equals the
StableHLO of the step the driver calls, for one run, a sweep axis and the FSDP mode."""
import dataclasses

import jax
import pytest

from jaxdict.plan.train_plan import lower_train_step
from jaxdict.sae.config import SAEConfig
from jaxdict.train import step as step_module
from jaxdict.train.config import DataConfig, MeshConfig, RunConfig, RunSettings
from jaxdict.train.driver import train_group
from jaxdict.train.optim import OptimConfig


def _driver_stablehlo(monkeypatch, cfgs, tmp_path) -> str:
    """Train one step and return the StableHLO of the step the driver called."""
    seen = []
    original = step_module.TrainStep.__call__

    def recording_call(self, state, batch):
        if not seen:
            seen.append(self.lower(state, batch).as_text())
        return original(self, state, batch)

    monkeypatch.setattr(step_module.TrainStep, "__call__", recording_call)
    train_group(cfgs, [str(tmp_path / c.run.name) for c in cfgs], log=lambda _: None)
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("shard,sweep", [("model", 1), ("fsdp", 1), ("model", 2)])
def test_planner_lowers_the_drivers_step(monkeypatch, tmp_path, devices, shard, sweep):
    base = RunConfig(
        sae=SAEConfig(arch="topk", d_in=16, n_features=64, k=4, compute_dtype="bfloat16"),
        optim=OptimConfig(lr=1e-3, total_steps=1),
        data=DataConfig(source="planted", batch_size=32, planted_rows=2048, planted_features=16,
                        eval_rows=64, slab_rows=256, shuffle_buffer_rows=512),
        mesh=MeshConfig(data=2, model=4, shard=shard),
        run=RunSettings(name="r0", log_every=1, checkpoint_every=0, progress=False, async_checkpoint=False),
    )
    cfgs = [dataclasses.replace(base, run=dataclasses.replace(base.run, name=f"r{i}"),
                                optim=dataclasses.replace(base.optim, lr=1e-3 * (i + 1))) for i in range(sweep)]
    driver = _driver_stablehlo(monkeypatch, cfgs, tmp_path)
    lowered, parts = lower_train_step(base, jax.devices()[:8], sweep_size=sweep if sweep > 1 else None)
    planner = lowered.as_text()
    assert "stablehlo" in planner and parts["params"] > 0
    assert planner == driver
