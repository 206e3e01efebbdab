"""CLTs through `jaxdict train` on 8 fake devices, from 2L row-aligned stores (resid_mid.l, mlp_out.l)
with per-layer norms that differ as a real model's do: resume after a crash bitwise, a mismatched
config refused on resume, NaN batches skipped and counted, a run of non-finite steps stopped with
its last good checkpoint intact, a sweep axis equal to separate runs, and the trained run loaded in
raw units and exported to circuit-tracer's layout from the command line."""
from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from jaxdict import run_layout
from jaxdict.clt.config import CLTConfig
from jaxdict.clt.forward import forward
from jaxdict.clt.planted import planted_clt_rows
from jaxdict.clt.run import CLTRunError, load_clt_run
from jaxdict.clt.step import split_rows
from jaxdict.clt.train_setup import hook_scales
from jaxdict.clt.train_state import load_or_init_clt_state
from jaxdict.data import ArraySource
from jaxdict.sae.config import ConfigError
from jaxdict.store import StoreWriter
from jaxdict.train import checkpoint as ckpt
from jaxdict.train.config import DataConfig, MeshConfig, RunConfig, RunSettings
from jaxdict.train.driver import train, train_group
from jaxdict.train.metrics_log import read_metrics
from jaxdict.train.mesh import make_mesh
from jaxdict.train.optim import OptimConfig
from jaxdict.train.run_setup import DataSources, RunDirConflict

L, D, F, B, N = 3, 8, 16, 64, 4096
META = {"model": "gemma3-270m", "corpus": {"format": "text", "spec": "default"}, "context_length": 64}
# Residual norms grow with depth and MLP outputs are smaller (as in Gemma 3 270M), so each hook
# needs its own scale; a mean offset as residual streams have.
X_GAIN, Y_GAIN = (1.0, 4.0, 16.0), (0.5, 0.2, 3.0)


def raw_rows(n=N, seed=0) -> np.ndarray:
    rows = planted_clt_rows(n, L, D, n_planted=8, seed=seed).reshape(n, 2, L, D)
    rows[:, 0] = rows[:, 0] * np.asarray(X_GAIN)[:, None] + 0.5
    rows[:, 1] = rows[:, 1] * np.asarray(Y_GAIN)[:, None]
    return rows.reshape(n, -1).astype(np.float32)


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    return write_clt_stores(tmp_path_factory.mktemp("clt_stores"))


def write_clt_stores(root):
    """The 2L stores resid_mid.l, mlp_out.l of raw_rows(), as one harvest writes them."""
    rows = raw_rows().reshape(N, 2, L, D)
    ids = np.arange(N)
    for h, hook in enumerate(("resid_mid", "mlp_out")):
        for layer in range(L):
            with StoreWriter.open(str(root / f"{hook}.{layer}"), d_in=D, dtype="float32", shard_rows=1024,
                                  metadata={**META, "hook": f"{hook}.{layer}"}) as w:
                w.append(rows[:, h, layer], (ids * 7 % 1000).astype(np.int32), (ids // 64).astype(np.int64),
                         (ids % 64).astype(np.int32))
    return root


def config(root, name="c", steps=20, arch="jumprelu", mesh=(2, 4), **run) -> RunConfig:
    k = {"k": 3} if arch != "jumprelu" else {"sparsity_coeff": 0.01}
    settings = dict(name=name, log_every=5, checkpoint_every=10, keep=3, progress=False) | run
    return RunConfig(clt=CLTConfig(n_layers=L, d_model=D, n_features=F, arch=arch, **k),
                     optim=OptimConfig(lr=3e-3, total_steps=steps),
                     data=DataConfig(source="store", store=str(root), batch_size=B, eval_fraction=0.1,
                                     eval_rows=256, slab_rows=128, shuffle_buffer_rows=512),
                     mesh=MeshConfig(data=mesh[0], model=mesh[1]), run=RunSettings(**settings))


def saved(run_dir, step=None):
    cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    loaded = load_or_init_clt_state(cfg.clt, cfg.optim, make_mesh(1, 1, devices=jax.devices()[:1]),
                                    run_dir=run_dir, step=step)
    assert loaded.step is not None
    return loaded


def assert_states_equal(a, b):
    leaves_a, leaves_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)
    for (path, x), y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


class Crash(Exception):
    pass


def crash_at(step):
    def cb(event, s):
        if event == "step" and s == step:
            raise Crash(step)
    return cb


def test_resume_after_crash_is_bitwise_and_config_changes_are_refused(store_root, tmp_path):
    full = train(config(store_root), tmp_path / "full")
    assert full.finished and full.step == 20 and full.n_nonfinite == 0
    with pytest.raises(Crash):
        train(config(store_root), tmp_path / "cut", callback=crash_at(13))
    assert ckpt.latest_step(tmp_path / "cut") == 10
    with pytest.raises(RunDirConflict, match="clt.sparsity_coeff"):
        bad = config(store_root)
        train(dataclasses.replace(bad, clt=dataclasses.replace(bad.clt, sparsity_coeff=0.02)), tmp_path / "cut")
    resumed = train(config(store_root), tmp_path / "cut")
    assert resumed.step == 20 and resumed.finished
    a, b = saved(tmp_path / "full"), saved(tmp_path / "cut")
    assert a.step == b.step == 20
    assert_states_equal(a.value, b.value)  # params, Adam moments, counters
    assert [r["step"] for r in read_metrics(tmp_path / "cut", "train")] == [5, 10, 15, 20]
    ev = read_metrics(tmp_path / "cut", "eval")
    train_fvu = [r["fvu"] for r in read_metrics(tmp_path / "cut", "train")]
    assert [r["step"] for r in ev] == [20] and 0 < ev[0]["fvu"] < train_fvu[0] and "fvu_2" in ev[0]
    resolved = json.loads((tmp_path / "full" / "config.json").read_text())
    assert resolved["clt"]["n_features"] == F and resolved["data"]["model"] == "gemma3-270m"
    assert run_layout.checkpoint_format_version(tmp_path / "full", 20) == 2
    names = sorted(run_layout._array_metadata(tmp_path / "full" / "checkpoints" / "20" / "params"))
    assert names == ["W_dec_0", "W_dec_1", "W_dec_2", "W_enc", "b_dec", "b_enc", "input_scale", "threshold"]
    # each hook got its own scale, from its store's statistics
    np.testing.assert_allclose(np.asarray(a.value.input_scale), hook_scales(raw_rows(), L, D), rtol=1e-3)


def test_loss_falls_and_run_loads_in_raw_units(store_root, tmp_path):
    result = train(config(store_root, steps=60, log_every=10), tmp_path / "r")
    logged = read_metrics(tmp_path / "r", "train")
    # from random decoders (fvu ~1.5 at step 10) to a clear fit of the planted cross-layer map
    assert logged[-1]["fvu"] < 0.5 * logged[0]["fvu"], [r["fvu"] for r in logged]
    assert result.eval["fvu"] < 0.7
    run = load_clt_run(tmp_path / "r")
    state = saved(tmp_path / "r").value
    rows = raw_rows(256, seed=5)
    scale = np.repeat(np.asarray(state.input_scale).reshape(-1), D)
    x_s, y_s = split_rows(rows * scale, run.cfg)
    trained = forward(jax.device_get(state.params), x_s, run.cfg, train=False)
    x_raw, _ = split_rows(rows, run.cfg)
    raw = forward(run.params, x_raw, run.cfg, train=False)
    s_out = np.asarray(state.input_scale)[1][None, :, None]
    np.testing.assert_allclose(np.asarray(raw.y_hat), np.asarray(trained.y_hat) / s_out, rtol=2e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(raw.l0), np.asarray(trained.l0))
    with pytest.raises(CLTRunError, match="step 7 was never saved"):
        load_clt_run(tmp_path / "r", step=7)
    from jaxdict.sae.io import SAELoadError, load_sae

    with pytest.raises(SAELoadError, match="cross-layer transcoder run"):
        load_sae(tmp_path / "r")


def _sources(rows):
    return DataSources(ArraySource(rows, split="train", eval_fraction=0.1),
                       ArraySource(rows, split="eval", eval_fraction=0.1), hook_scales(rows[:2048], L, D))


def test_nan_batches_are_skipped_and_a_nonfinite_run_stops_at_its_last_good_checkpoint(store_root, tmp_path):
    rows = raw_rows()
    rng = np.random.default_rng(0)
    rows[rng.choice(N, 12, replace=False), 5] = np.nan
    result = train(config(store_root), tmp_path / "nan", sources=_sources(rows))
    assert 1 <= result.n_nonfinite < 20 and not result.diverged and result.finished
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(saved(tmp_path / "nan").value))
    assert read_metrics(tmp_path / "nan", "train")[-1]["n_nonfinite"] == result.n_nonfinite

    cfg = config(store_root, steps=40, max_consecutive_nonfinite=5)
    clean = raw_rows()
    with pytest.raises(Crash):
        train(cfg, tmp_path / "r", sources=_sources(clean), callback=crash_at(12))
    good = saved(tmp_path / "r", 10).value
    poisoned = DataSources(ArraySource(np.full_like(clean, np.nan), split="train", eval_fraction=0.1),
                           ArraySource(clean, split="eval", eval_fraction=0.1), hook_scales(clean[:2048], L, D))
    stopped = train(cfg, tmp_path / "r", sources=poisoned)
    assert stopped.diverged and stopped.step == 15
    assert "5 consecutive non-finite steps" in stopped.stop_reason and "step 10" in stopped.stop_reason
    assert ckpt.latest_step(tmp_path / "r") == 10
    assert_states_equal(good, saved(tmp_path / "r", 10).value)


@pytest.mark.slow  # 35 s under load 6: three compiles of the step and the evaluator
def test_sweep_axis_equals_separate_runs(store_root, tmp_path):
    """Members differing in every per-member field (λ, lr, seed) step together under vmap."""
    base = config(store_root, steps=10, checkpoint_every=0)
    members = [
        dataclasses.replace(base, run=dataclasses.replace(base.run, name="a", seed=0)),
        dataclasses.replace(base, clt=dataclasses.replace(base.clt, sparsity_coeff=0.05),
                            optim=dataclasses.replace(base.optim, lr=1e-3),
                            run=dataclasses.replace(base.run, name="b", seed=1)),
    ]
    grouped = train_group(members, [tmp_path / "g" / m.run.name for m in members])
    for m, g in zip(members, grouped):
        alone = train(m, tmp_path / "s" / m.run.name)
        pa, pg = saved(tmp_path / "s" / m.run.name).value.params, saved(tmp_path / "g" / m.run.name).value.params
        for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(pa)[0], jax.tree.leaves(pg), strict=True):
            np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=2e-5, atol=1e-6,
                                       err_msg=f"{m.run.name} {jax.tree_util.keystr(path)}")
        assert g.eval["fvu"] == pytest.approx(alone.eval["fvu"], rel=1e-4)
    a, b = (saved(tmp_path / "g" / n).value.params.W_dec[0] for n in "ab")
    assert not np.allclose(np.asarray(a), np.asarray(b))
    with pytest.raises(ConfigError, match="clt.n_features"):
        odd = dataclasses.replace(members[1], clt=dataclasses.replace(base.clt, n_features=32))
        train_group([members[0], odd], [tmp_path / "x" / "a", tmp_path / "x" / "b"])


def test_clt_configs_refuse_what_a_clt_does_not_use(store_root):
    from jaxdict.config import apply_overrides
    from jaxdict.sae.config import SAEConfig
    from jaxdict.train.step_builder import build_train_step

    cfg = config(store_root)
    with pytest.raises(ConfigError, match="does not use the sae section"):
        dataclasses.replace(cfg, sae=dataclasses.replace(SAEConfig(), n_features=2 * SAEConfig().n_features))
    with pytest.raises(ConfigError, match="mesh.shard = 'fsdp'"):
        apply_overrides(cfg, ["mesh.shard=fsdp"])
    with pytest.raises(ConfigError, match="data.hook"):
        apply_overrides(cfg, ["data.hook=resid_post.9"])
    with pytest.raises(ConfigError, match="build_clt_step"):
        build_train_step(cfg, make_mesh(1, 1, devices=jax.devices()[:1]))
    assert apply_overrides(cfg, ["clt.k=null", "clt.n_features=32"]).clt.n_features == 32


@pytest.mark.slow
def test_sigterm_preempts_and_the_resumed_run_equals_an_uninterrupted_one(store_root, tmp_path):
    """`jaxdict train` in a child process: SIGTERM mid-run saves and exits 0 (preempted); the same
    command then finishes the run, bitwise equal to a run never interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from test_checkpoint_faults import child_env

    cfg = config(store_root, steps=60, checkpoint_every=0, log_every=2)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    run_dir = tmp_path / "r"
    command = [sys.executable, "-m", "jaxdict.cli", "train", "--config", str(cfg_file), "--out", str(run_dir)]
    env = child_env() | {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    p = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (run_dir / "metrics.jsonl").is_file() or not (run_dir / "metrics.jsonl").read_text().strip():
        assert p.poll() is None and time.time() < deadline, p.communicate()[1][-3000:]
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    step = ckpt.latest_step(run_dir)
    assert step is not None and 2 <= step < 60 and f"preempted at step {step}" in err
    assert not (run_dir / "result.json").exists()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "finished at step 60" in done.stdout, done.stderr[-3000:]
    train(cfg, tmp_path / "ref")
    assert_states_equal(saved(tmp_path / "ref").value, saved(run_dir).value)
