"""Two real JAX processes (gloo CPU collectives on localhost, 2 devices each) train one SAE on a
2×2 mesh spanning both through `jaxdict train`, and agree with the same run in one process."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxdict.data import ActivationLoader
from jaxdict.sae.config import SAEConfig
from jaxdict.train import checkpoint as ckpt
from jaxdict.train.config import DataConfig, MeshConfig, RunConfig, RunSettings
from jaxdict.train.mesh import batch_sharding, make_mesh
from jaxdict.train.optim import OptimConfig
from jaxdict.train.run_setup import initial_b_dec, open_sources
from jaxdict.train.state import load_or_init_state
from jaxdict.train.step_builder import build_train_step
from saved_state import saved_params

STEPS = 12


def config() -> RunConfig:
    return RunConfig(
        sae=SAEConfig(arch="topk", d_in=16, n_features=64, k=4),
        optim=OptimConfig(lr=3e-3, total_steps=STEPS),
        data=DataConfig(source="planted", batch_size=32, planted_rows=4096, planted_features=32,
                        eval_fraction=0.1, eval_rows=128, slab_rows=64, shuffle_buffer_rows=256),
        mesh=MeshConfig(data=2, model=2),
        run=RunSettings(name="mh", log_every=4, checkpoint_every=6, progress=False),
    )


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_reference(cfg):
    """The same maths in this process: 4 of the 8 fake devices, each global batch built from the
    two processes' local batches (process p holds rows [p·B/2, (p+1)·B/2) of every batch)."""
    mesh = make_mesh(2, 2, devices=jax.devices()[:4])
    sources = open_sources(cfg)
    # the driver's own initial state (seed, input scale, hparams, b_dec) and step
    state = load_or_init_state(cfg.sae, cfg.optim, mesh, seed=cfg.run.seed, input_scale=sources.input_scale,
                               hparams={"lr": cfg.optim.lr, "sparsity_coeff": cfg.sparsity_coeff},
                               b_dec=initial_b_dec(cfg, sources)).value
    step = build_train_step(cfg, mesh).step
    slab = min(cfg.data.slab_rows, sources.train.n_rows // 2)
    local = [ActivationLoader(sources.train, cfg.data.batch_size, seed=cfg.data.seed, slab_rows=slab,
                              shuffle_buffer_rows=cfg.data.shuffle_buffer_rows, process_index=p,
                              process_count=2).iter_local() for p in range(2)]
    for _ in range(STEPS):
        batch = np.concatenate([next(it) for it in local])
        state, _ = step(state, jax.device_put(batch, batch_sharding(mesh)))
    return state


def launch_two_processes(cfg, tmp_path):
    """`jaxdict train` of `cfg` as two jax.distributed processes of 2 CPU devices each."""
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    run_dir = tmp_path / "run"
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", JAX_NUMPY_DTYPE_PROMOTION="strict")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "jaxdict.cli", "train", "--config", str(cfg_file), "--out", str(run_dir),
         "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i), "--cpu-devices", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    return procs, run_dir


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    cfg = config()
    procs, run_dir = launch_two_processes(cfg, tmp_path)
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    # only process 0 prints the config and logs
    assert '"name": "mh"' in outs[0][0] and '"name": "mh"' not in outs[1][0]
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [4, 8, 12]
    assert ckpt.latest_step(run_dir) == 12

    # written by 2 processes × 2 devices, read here on one process (8 devices) without targets
    saved = saved_params(run_dir)
    ref = single_process_reference(cfg)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        np.testing.assert_allclose(saved[name], np.asarray(getattr(ref.params, name)), rtol=1e-5, atol=1e-7,
                                   err_msg=name)
    assert float(saved["input_scale"]) == float(ref.input_scale)


@pytest.mark.slow
def test_sigterm_to_both_processes_stops_them_at_one_step_with_a_checkpoint(tmp_path):
    """JAX's preemption sync point (via Orbax) makes both processes save the same step, exit 0."""
    import dataclasses
    import signal
    import time

    cfg = config()
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, total_steps=100000),
                              run=dataclasses.replace(cfg.run, checkpoint_every=0))
    procs, run_dir = launch_two_processes(cfg, tmp_path)
    deadline = time.time() + 240
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert all(p.poll() is None for p in procs) and time.time() < deadline, procs[0].communicate()[1][-3000:]
        time.sleep(0.2)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    step = ckpt.latest_step(run_dir)
    assert step is not None and all(f"preempted at step {step}" in err for _, err in outs)
    assert not (run_dir / "result.json").exists()
