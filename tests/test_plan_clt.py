"""`jaxdict plan` for cross-layer transcoders: the CLT step `jaxdict train` runs, compiled for a TPU
v5e 2x2 on this CPU machine with libtpu's compiler (never run), and the CLI's --clt path.

Needs libtpu (`pip install -e '.[tpu]'`), as tests/test_plan_tpu.py.
"""
import importlib.util

import pytest

from jaxdict.clt.config import CLTConfig
from jaxdict.plan.chips import GiB, parse_topology
from jaxdict.sae.config import ConfigError
from jaxdict.train.config import DataConfig, MeshConfig, RunConfig

if importlib.util.find_spec("libtpu") is None:
    pytest.skip("libtpu is not installed (pip install -e '.[tpu]')", allow_module_level=True)

from jaxdict.plan.train_plan import plan_train  # noqa: E402

V5E_2X2 = parse_topology("v5e:2x2")
L, D, F, B = 3, 64, 256, 64


def _cfg(data: int, model: int, arch: str = "jumprelu") -> RunConfig:
    k = None if arch == "jumprelu" else 4
    clt = CLTConfig(n_layers=L, d_model=D, n_features=F, arch=arch, k=k, decode="sparse" if arch == "topk" else "dense")
    return RunConfig(clt=clt, data=DataConfig(source="planted", batch_size=B), mesh=MeshConfig(data=data, model=model))


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [(4, 1), (1, 4)])
def test_compiled_clt_step_for_v5e_has_the_formula_params_per_device(mesh):
    data, model = mesh
    plan = plan_train(_cfg(data, model), V5E_2X2)
    assert plan.fits, plan.error
    mem = plan.cost.memory
    # Encoders L·d·F + decoders L(L+1)/2·F·d + b_enc and θ (L·F each), split over `model`; b_dec L·d
    # replicated; float32. Written out here rather than calling jaxdict.clt.params.bytes_per_device.
    params = 4 * ((L * D * F + L * (L + 1) // 2 * F * D + 2 * L * F) // model + L * D)
    assert mem.parts["params"] == params
    # Adam: two moments shaped like the params, plus its step count (one int32 per moment chain).
    assert 2 * params <= mem.parts["optimiser state"] <= 2 * params + 64
    assert mem.parts["batch"] == 4 * (B // data) * 2 * L * D  # rows [resid_mid.0..L-1 | mlp_out.0..L-1]
    assert sum(mem.parts.values()) <= mem.arguments and 0 < mem.peak < mem.hbm == 16 * GiB
    # At least the encoder forward on the device's share: 2·(B/data)·L·d·(F/model) FLOPs.
    assert plan.cost.flops >= 2 * (B // data) * L * D * (F // model)
    ops = {(u.collective.op, u.collective.group_size) for u in plan.cost.collectives}
    assert ("all-reduce", 4) in ops  # gradients over data (4x1) or decoder outputs over model (1x4)
    r = plan.roofline
    assert r.step_s >= max(r.compute_s, r.memory_s) > 0 and r.tokens_per_step == B


@pytest.mark.slow
def test_cli_plans_a_clt_config_file(tmp_path, capsys):
    from jaxdict.cli import main

    cfg_file = tmp_path / "c.py"
    cfg_file.write_text(
        "from jaxdict.clt.config import CLTConfig\n"
        "from jaxdict.train.config import RunConfig, DataConfig\n"
        f"CLT = CLTConfig(n_layers={L}, d_model={D}, n_features={F}, arch='batchtopk', k=4)\n"
        f"CONFIGS = {{'tiny': RunConfig(clt=CLT, data=DataConfig(source='planted', batch_size={B}))}}\n")
    assert main(["plan", "--topology", "v5e:2x2", "--config", f"{cfg_file}:tiny", "--mesh", "2x2"]) == 0
    out = capsys.readouterr().out
    for needle in ("CLT batchtopk k=4", f"{L} layers, d_model {D}", "per-device memory", "optimiser state",
                   "temporaries", "collectives", "(jaxdict.clt.bench.step_flops)", "h per 1B tokens", "host(s) reads"):
        assert needle in out, needle


def test_cli_refuses_a_clt_too_large_for_the_slice_before_compiling(capsys):
    """Gemma 3 1B at 20,160 features per layer: 35 GB of params, 105 GB with Adam's moments — over
    16 GiB on every mesh of 4 v5e chips, so neither the plan nor any candidate is compiled."""
    from jaxdict.cli import main

    code = main(["plan", "--topology", "v5e:2x2", "--clt", "gemma3-1b", "--clt-features", "524k", "--mesh", "4x1"])
    out = capsys.readouterr().out
    assert code == 1
    assert "26 layers, d_model 1152, 20,160 features per layer" in out
    assert "does not fit" in out and "Adam state alone" in out
    assert "no mesh or batch tried fits" in out


def test_fit_candidates_for_a_clt_widen_the_model_axis_and_never_use_fsdp():
    from jaxdict.plan.advice import candidates
    from jaxdict.plan.clt_plan import clt_run_config

    cfg = clt_run_config("gemma3-270m", 14_560, batch_size=4096, data=8, model_axis=1)
    cands = candidates(cfg, 8)
    assert {c.mesh.shard for c in cands} == {"model"}
    assert [c.mesh.model for c in cands if c.mesh.model > 1] == [2, 4, 8]  # 14,560 = 2^5 · 455
    assert all(c.clt == cfg.clt for c in cands)


def test_clt_widths_and_shapes():
    from jaxdict.plan.clt_plan import clt_model_shape, parse_width

    assert clt_model_shape("gemma3-270m") == (18, 640) and clt_model_shape("gemma3-1b") == (26, 1152)
    assert parse_width("gemma3-1b", "262k") == 10_080 and parse_width("gemma3-1b", "4096") == 4096
    with pytest.raises(ConfigError, match="262k"):
        parse_width("gemma3-270m", "524k")
    with pytest.raises(ConfigError, match="gemma3-1b"):
        clt_model_shape("gemma3-2b")
