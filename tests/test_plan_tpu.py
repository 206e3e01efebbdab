"""Compile for a real TPU topology (v5e 2x2) on this CPU machine with libtpu's compiler, in the same
pytest run as the CPU suite (JAX_PLATFORMS=cpu: the topology's devices are compiled for, never run).

Needs libtpu (`pip install -e '.[tpu]'`, which `.ci/run` installs; CI fails on any skip).
"""
import importlib.util

import pytest

from jaxdict.plan.chips import GiB, parse_topology
from jaxdict.sae.config import ARCHITECTURES, SAEConfig
from jaxdict.train.config import DataConfig, MeshConfig, RunConfig

if importlib.util.find_spec("libtpu") is None:
    pytest.skip("libtpu is not installed (pip install -e '.[tpu]')", allow_module_level=True)

from jaxdict.plan.train_plan import plan_train  # noqa: E402

V5E_2X2 = parse_topology("v5e:2x2")


def _cfg(arch: str, data: int, model: int, shard: str = "model", d_in: int = 64, n_features: int = 2048,
         batch: int = 256, dtype: str = "bfloat16") -> RunConfig:
    return RunConfig(sae=SAEConfig(arch=arch, d_in=d_in, n_features=n_features, k=16, compute_dtype=dtype),
                     data=DataConfig(source="planted", batch_size=batch),
                     mesh=MeshConfig(data=data, model=model, shard=shard))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_compiles_for_v5e_2x2(arch):
    plan = plan_train(_cfg(arch, 2, 2), V5E_2X2)
    assert plan.fits, plan.error
    mem = plan.cost.memory
    assert mem.hbm == 16 * GiB and 0 < mem.peak < mem.hbm
    # The compiler's argument bytes are the state and batch shards (plus TPU tile padding).
    assert sum(mem.parts.values()) <= mem.arguments <= 1.1 * sum(mem.parts.values()) + (1 << 20)
    # An SAE step is at least its encoder matmul on the device's quarter of B×F: 2·(B/2)·d·(F/2).
    assert plan.cost.flops >= 2 * 128 * 64 * 1024
    ops = {(u.collective.op, u.collective.group_size) for u in plan.cost.collectives}
    assert ("all-reduce", 2) in ops  # gradients summed over the data axis (or features over model)
    r = plan.roofline
    assert r.step_s >= max(r.compute_s, r.memory_s) > 0 and r.tokens_per_step == 256
    if arch in ("topk", "batchtopk"):
        assert plan.cost.sorts and r.sort_s > 0  # the top-k traffic is in the estimate


@pytest.mark.slow
@pytest.mark.parametrize("shard,meshes", [("model", [(4, 1), (2, 2), (1, 4)]), ("fsdp", [(4, 1), (2, 2)])])
def test_compiled_param_memory_falls_as_one_over_devices(shard, meshes):
    """Compiled for v5e: per-device params 1/model (model mode) or 1/devices (fsdp); the
    compiler's argument bytes follow."""
    plans = {m: plan_train(_cfg("relu_l1", *m, shard=shard, n_features=4096), V5E_2X2) for m in meshes}
    whole = 4 * (2 * 64 * 4096 + 4096 + 64)
    for (data, model), plan in plans.items():
        n = model if shard == "model" else data * model
        params = plan.cost.memory.parts["params"]
        assert params == pytest.approx(whole / n, rel=0.01), (data, model)
        assert plan.cost.memory.parts["optimiser state"] == pytest.approx(2 * whole / n, rel=0.01)


@pytest.mark.slow
def test_a_config_that_does_not_fit_is_refused_with_a_mesh_that_fits():
    """d 2048, F 2^19: params + Adam are 25.8 GB — over one 16 GiB v5e unless split by 4."""
    from jaxdict.plan.advice import find_fit, overflow_message

    cfg = _cfg("relu_l1", 4, 1, d_in=2048, n_features=1 << 19, batch=1024)
    plan = plan_train(cfg, V5E_2X2)
    assert not plan.fits
    msg = overflow_message(plan)
    assert "does not fit" in msg and "TPU v5e" in msg
    fit = find_fit(cfg, plan, max_compiles=3)
    assert fit is not None and fit.fits
    assert fit.cfg.mesh.model * (fit.mesh_shape[0] if fit.cfg.mesh.shard == "fsdp" else 1) >= 2
    assert fit.cost.memory.peak < 16 * GiB


@pytest.mark.slow
def test_cli_plans_a_sweep_file_and_exits_1_when_it_does_not_fit(tmp_path, capsys):
    from jaxdict.cli import main

    cfg_file = tmp_path / "c.py"
    cfg_file.write_text(
        "from jaxdict.sae.config import SAEConfig\n"
        "from jaxdict.train.config import RunConfig, DataConfig, MeshConfig\n"
        "CONFIGS = {'small': RunConfig(sae=SAEConfig(arch='jumprelu', d_in=64, n_features=2048),"
        " data=DataConfig(source='planted', batch_size=256))}\n")
    assert main(["plan", "--topology", "v5e:2x2", "--config", f"{cfg_file}:small", "--mesh", "2x2",
                 "--json", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    for needle in ("per-device memory", "headroom", "collectives", "h per 1B tokens", "host(s) reads"):
        assert needle in out
    code = main(["plan", "--topology", "v5e:2x2", "--config", f"{cfg_file}:small", "--mesh", "4x1",
                 "--set", "sae.d_in=4096", "--set", "sae.n_features=1048576", "--search", "0"])
    assert code == 1
    assert "does not fit" in capsys.readouterr().out


def test_unknown_topology_is_a_clear_error():
    from jaxdict.cli import main

    assert main(["plan", "--topology", "v7x:2x2", "--config", "experiments/base.py:tiny"]) == 1



@pytest.mark.slow
@pytest.mark.parametrize("model", [1, 4])
def test_aux_k_recomputes_its_slot_preactivations_for_tpu_and_reads_them_on_cpu(model):
    """AuxK's slot pre-activations: read from the forward pass's z by a row gather on XLA:CPU, where
    the B·C·d matmul is the cost; recomputed by that matmul when compiled for TPU, where the gather
    moved ~5× the step's HBM bytes (sae/auxk.py, BENCHMARKS.md "Ninth session"). Seen in the
    compiled step: the gather's op names inside AuxK's buffer switch."""
    import jax

    from jaxdict.plan.devices import topology_devices
    from jaxdict.plan.train_plan import lower_train_step

    cfg = _cfg("topk", 1, model)

    def gathers_in_aux_k_switch(devices) -> int:
        text = lower_train_step(cfg, devices)[0].compile().as_text()
        return sum(1 for line in text.splitlines() if "cond/branch_" in line and "take_along_axis" in line)

    assert gathers_in_aux_k_switch(topology_devices(V5E_2X2)) == 0
    assert gathers_in_aux_k_switch(jax.devices("cpu")[:model]) > 0
