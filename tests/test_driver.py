"""The training driver in-process on 8 fake CPU devices: resume, restore onto another mesh, NaN
batches, the sweep axis, and the refusals (different config, store/SAE mismatch, mesh too big)."""
import dataclasses
import json

import jax
import numpy as np
import pytest

from jaxdict.data import ActivationLoader, ArraySource
from jaxdict.sae.config import ConfigError, SAEConfig
from jaxdict import run_layout
from jaxdict.train import checkpoint as ckpt
from jaxdict.train.config import DataConfig, MeshConfig, RunConfig, RunSettings
from jaxdict.train.driver import train, train_group
from jaxdict.train.mesh import make_mesh
from jaxdict.train.metrics_log import read_metrics
from jaxdict.train.optim import OptimConfig
from jaxdict.train.run_setup import DataSources, RunDirConflict, input_scale_from_rows
from saved_state import saved_params, saved_state

D, F, B = 16, 64, 64


def tiny(name="r", steps=20, arch="relu_l1", mesh=(2, 4), **run) -> RunConfig:
    settings = dict(name=name, log_every=5, checkpoint_every=10, keep=3, progress=False)
    settings.update(run)
    return RunConfig(
        sae=SAEConfig(arch=arch, d_in=D, n_features=F, k=4, l1_coeff=2.0),
        optim=OptimConfig(lr=3e-3, total_steps=steps),
        data=DataConfig(source="planted", batch_size=B, planted_rows=8192, planted_features=32,
                        eval_fraction=0.1, eval_rows=256, slab_rows=128, shuffle_buffer_rows=512),
        mesh=MeshConfig(data=mesh[0], model=mesh[1]),
        run=RunSettings(**settings),
    )


def params_of(run_dir, step=None):
    """The saved params item as numpy, read by the resume path."""
    return saved_params(run_dir, step)


class Crash(Exception):
    pass


def crash_at(step):
    def cb(event, s):
        if event == "step" and s == step:
            raise Crash(step)
    return cb


def test_layout_and_resume_after_crash_is_bitwise(tmp_path):
    full = train(tiny(), tmp_path / "full")
    assert full.finished and not full.diverged and full.step == 20
    with pytest.raises(Crash):
        train(tiny(), tmp_path / "cut", callback=crash_at(13))
    assert ckpt.latest_step(tmp_path / "cut") == 10
    resumed = train(tiny(), tmp_path / "cut")
    assert resumed.step == 20
    a, b = params_of(tmp_path / "full"), params_of(tmp_path / "cut")
    assert sorted(a) == ["W_dec", "W_enc", "b_dec", "b_enc", "input_scale"]
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # the metrics file reads as one run: steps 5..20 once each, eval at the end
    steps = [r["step"] for r in read_metrics(tmp_path / "cut", "train")]
    assert steps == [5, 10, 15, 20]
    ev = read_metrics(tmp_path / "cut", "eval")
    assert [r["step"] for r in ev] == [20] and 0 < ev[0]["fvu"] < 1
    cfg = json.loads((tmp_path / "full" / "config.json").read_text())
    assert cfg["data"]["d_in"] == D and cfg["sae"]["n_features"] == F and cfg["data"]["model"] == "planted"
    assert json.loads((tmp_path / "full" / "result.json").read_text())["eval"]["fvu"] == ev[0]["fvu"]
    assert list((tmp_path / "full" / "tb").iterdir())
    # format version 2: the run folder's format.json and each checkpoint's format item
    assert run_layout.run_format_version(tmp_path / "full") == run_layout.FORMAT_VERSION == 2
    assert run_layout.checkpoint_format_version(tmp_path / "cut", 20) == 2


def test_restore_8_device_checkpoint_onto_4_devices(tmp_path):
    run_dir = tmp_path / "r"
    with pytest.raises(Crash):
        train(tiny(steps=20), run_dir, callback=crash_at(12))  # 2×4 mesh, checkpoint at 10
    cfg = tiny()
    mesh4 = make_mesh(2, 2, devices=jax.devices()[:4])
    loaded = saved_state(run_dir, mesh=mesh4)
    state, config = loaded.value, loaded.json["config"]
    assert loaded.step == 10 and int(state.step) == 10 and config["run"]["name"] == "r"
    assert state.params.W_enc.sharding.mesh.devices.size == 4
    saved = params_of(run_dir, 10)
    np.testing.assert_array_equal(np.asarray(state.params.W_dec), saved["W_dec"])
    # and training continues on the 4-device mesh (mesh changes are not config changes)
    result = train(dataclasses.replace(cfg, mesh=MeshConfig(data=2, model=2)), run_dir)
    assert result.finished and result.step == 20 and np.isfinite(result.eval["fvu"])
    ref = train(tiny(), tmp_path / "ref")
    np.testing.assert_allclose(params_of(run_dir)["W_dec"], params_of(tmp_path / "ref")["W_dec"], rtol=1e-4, atol=1e-6)
    assert ref.finished


def _sources_with(x, scale=None):
    train_src = ArraySource(x, split="train", eval_fraction=0.1)
    return DataSources(train_src, ArraySource(x, split="eval", eval_fraction=0.1),
                       scale or input_scale_from_rows(x[:4096]))


def test_nan_batches_are_skipped_and_counted(tmp_path):
    cfg = tiny(steps=20)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8192, D)).astype(np.float32)
    x[rng.choice(8192, 40, replace=False)] = np.nan
    src = _sources_with(x)
    result = train(cfg, tmp_path / "r", sources=src)
    # the same stream, replayed on the host: which of the 20 batches held a NaN row?
    it = ActivationLoader(src.train, B, seed=0, slab_rows=128, shuffle_buffer_rows=512,
                          process_index=0, process_count=1).iter_local()
    bad = sum(bool(np.isnan(next(it)).any()) for _ in range(20))
    assert bad >= 1 and result.n_nonfinite == bad and not result.diverged
    assert all(np.isfinite(v).all() for v in params_of(tmp_path / "r").values())
    logged = read_metrics(tmp_path / "r", "train")
    assert logged[-1]["n_nonfinite"] == bad


def test_consecutive_nonfinite_stop_keeps_last_good_checkpoint(tmp_path, capsys):
    cfg = tiny(steps=40, max_consecutive_nonfinite=5)
    x = np.random.default_rng(1).normal(size=(8192, D)).astype(np.float32)
    with pytest.raises(Crash):
        train(cfg, tmp_path / "r", sources=_sources_with(x), callback=crash_at(12))
    good = params_of(tmp_path / "r", 10)
    poisoned = _sources_with(np.full_like(x, np.nan), scale=input_scale_from_rows(x[:4096]))
    result = train(cfg, tmp_path / "r", sources=poisoned, log=print)
    assert result.diverged and result.step == 15
    assert "5 consecutive non-finite steps" in result.stop_reason and "step 10" in result.stop_reason
    assert "max_consecutive_nonfinite=5" in capsys.readouterr().out
    assert ckpt.latest_step(tmp_path / "r") == 10
    after = params_of(tmp_path / "r", 10)
    for k in good:
        np.testing.assert_array_equal(good[k], after[k])
    assert json.loads((tmp_path / "r" / "result.json").read_text())["diverged"] is True


def test_sweep_axis_equals_separate_runs(tmp_path):
    members = [
        dataclasses.replace(tiny("a"), run=dataclasses.replace(tiny("a").run, seed=0)),
        dataclasses.replace(tiny("b"), sae=dataclasses.replace(tiny().sae, l1_coeff=0.5),
                            run=dataclasses.replace(tiny("b").run, seed=1)),
        dataclasses.replace(tiny("c"), optim=dataclasses.replace(tiny().optim, lr=1e-3),
                            run=dataclasses.replace(tiny("c").run, seed=2)),
    ]
    grouped = train_group(members, [tmp_path / "g" / m.run.name for m in members])
    for m, g in zip(members, grouped):
        alone = train(m, tmp_path / "s" / m.run.name)
        pa, pg = params_of(tmp_path / "s" / m.run.name), params_of(tmp_path / "g" / m.run.name)
        for k in pa:
            np.testing.assert_allclose(pg[k], pa[k], rtol=2e-5, atol=1e-6, err_msg=f"{m.run.name} {k}")
        assert g.eval["fvu"] == pytest.approx(alone.eval["fvu"], rel=1e-4)
        saved = json.loads((tmp_path / "g" / m.run.name / "config.json").read_text())
        assert saved["run"]["name"] == m.run.name and saved["optim"]["lr"] == m.optim.lr
    # members really differ
    assert not np.allclose(params_of(tmp_path / "g" / "a")["W_dec"], params_of(tmp_path / "g" / "b")["W_dec"])


def test_group_refuses_members_of_different_shape(tmp_path):
    b = dataclasses.replace(tiny("b"), sae=dataclasses.replace(tiny().sae, n_features=128))
    with pytest.raises(ConfigError, match="sae.n_features"):
        train_group([tiny("a"), b], [tmp_path / "a", tmp_path / "b"])


def test_run_dir_with_other_config_is_refused_unless_forced(tmp_path):
    train(tiny(steps=5), tmp_path / "r")
    other = dataclasses.replace(tiny(steps=5), optim=dataclasses.replace(tiny().optim, lr=1e-2, total_steps=5))
    with pytest.raises(RunDirConflict, match=r"optim.lr: 0.003 -> 0.01"):
        train(other, tmp_path / "r")
    result = train(other, tmp_path / "r", force=True)
    assert result.finished
    assert json.loads((tmp_path / "r" / "config.json").read_text())["optim"]["lr"] == 1e-2


def test_store_that_does_not_match_the_sae_is_refused(tmp_path):
    from jaxdict.store import StoreWriter

    w = StoreWriter.open(str(tmp_path / "store"), d_in=8, dtype="float32", metadata={"model": "m", "hook": "h"})
    n = 256
    w.append(np.ones((n, 8), np.float32), np.zeros(n, np.int32), np.arange(n, dtype=np.int32) // 16,
             np.arange(n, dtype=np.int32) % 16)
    w.close()
    cfg = dataclasses.replace(tiny(), data=dataclasses.replace(tiny().data, source="store", store=str(tmp_path / "store")))
    with pytest.raises(ConfigError, match="d_in=8, but sae.d_in = 16"):
        train(cfg, tmp_path / "r")
    cfg8 = dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, d_in=8),
                               data=dataclasses.replace(cfg.data, hook="resid_post.3"))
    with pytest.raises(ConfigError, match="data.hook = 'resid_post.3'.*'h'"):
        train(cfg8, tmp_path / "r")


def test_mesh_that_does_not_fit_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="only 8 are present"):
        train(tiny(mesh=(4, 4)), tmp_path / "r")
    with pytest.raises(ConfigError, match="not divisible by the mesh's model axis"):
        train(dataclasses.replace(tiny(mesh=(1, 8)), sae=dataclasses.replace(tiny().sae, n_features=60)), tmp_path / "r")


def test_group_resumes_from_the_step_every_member_has(tmp_path):
    members = [tiny("a"), dataclasses.replace(tiny("b"), sae=dataclasses.replace(tiny().sae, l1_coeff=0.5))]
    dirs = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(Crash):
        train_group(members, dirs, callback=crash_at(12))
    # as if the process died after member a's save of a later step but before member b's
    import shutil
    shutil.copytree(dirs[0] / "checkpoints" / "10", dirs[0] / "checkpoints" / "15")
    assert ckpt.all_steps(dirs[0]) == [10, 15] and ckpt.all_steps(dirs[1]) == [10]
    messages = []
    results = train_group(members, dirs, log=messages.append)
    assert messages == ["resuming a, b from step 10"] and all(r.step == 20 for r in results)
    assert ckpt.all_steps(dirs[0]) == ckpt.all_steps(dirs[1]) == [10, 20]


def test_jumprelu_resume_keeps_the_derived_scales_it_started_with(tmp_path):
    """θ₀, ε and the penalty coefficient are measured on the first batch when a run starts. Measured
    again on resume they can differ in the last bits (another BLAS, another jaxdict); the resumed run
    must take the saved values, not refuse its own folder as a different config."""
    cfg = tiny(arch="jumprelu", steps=20)
    with pytest.raises(Crash):
        train(cfg, tmp_path / "cut", callback=crash_at(13))
    config_file = tmp_path / "cut" / "config.json"
    saved = json.loads(config_file.read_text())
    measured = {f: saved["sae"][f] for f in ("jumprelu_bandwidth", "jumprelu_init_threshold", "l0_coeff")}
    assert all(v is not None and v > 0 for v in measured.values()), measured
    # What a measurement on another machine might have written: the same numbers, 1e-12 apart.
    nudged = {f: v * (1 + 1e-12) for f, v in measured.items()}
    saved["sae"].update(nudged)
    config_file.write_text(json.dumps(saved))
    resumed = train(cfg, tmp_path / "cut")
    assert resumed.finished and resumed.step == 20
    after = json.loads(config_file.read_text())["sae"]
    assert {f: after[f] for f in nudged} == nudged
    # A changed target is still a different run: refused, naming the field.
    with pytest.raises(RunDirConflict, match="target_l0"):
        train(dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, target_l0=8)), tmp_path / "cut")
