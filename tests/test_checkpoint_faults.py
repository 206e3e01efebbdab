"""Faults in separate processes: SIGKILL at several points (one during an asynchronous save), then
resume, ends bitwise equal to an uninterrupted run; SIGTERM saves a checkpoint and exits 0."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from jaxdict.train import checkpoint as ckpt
from jaxdict.train.config import DataConfig, MeshConfig, RunConfig, RunSettings
from jaxdict.sae.config import SAEConfig
from jaxdict.train.driver import train
from jaxdict.train.optim import OptimConfig
from saved_state import saved_state

from conftest import XLA_TEST_FLAGS  # the children compile as this process does


def child_env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = XLA_TEST_FLAGS
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_NUMPY_DTYPE_PROMOTION"] = "strict"
    return env


def config(steps=16, checkpoint_every=4) -> RunConfig:
    return RunConfig(
        sae=SAEConfig(arch="topk", d_in=16, n_features=64, k=4),
        optim=OptimConfig(lr=3e-3, total_steps=steps),
        data=DataConfig(source="planted", batch_size=64, planted_rows=8192, planted_features=32,
                        eval_fraction=0.1, eval_rows=256, slab_rows=128, shuffle_buffer_rows=512),
        mesh=MeshConfig(data=2, model=4),
        run=RunSettings(name="f", log_every=2, checkpoint_every=checkpoint_every, keep=2, progress=False),
    )


# Trains the config in argv[1] into argv[2]; SIGKILLs itself at (event, step) = argv[3], argv[4],
# for "step" kills once checkpoint argv[5] has finished (async saves of tiny states can take longer
# than a few tiny steps; the point is a kill between checkpoints, not racing the previous save).
KILLER = textwrap.dedent("""
    import json, os, signal, sys, time
    from jaxdict.train.checkpoint import latest_step
    from jaxdict.train.config import RunConfig
    from jaxdict.train.driver import train
    cfg = RunConfig.from_dict(json.load(open(sys.argv[1])))
    event, at, wait_for = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    def die(e, s):
        if e == event and s == at:
            deadline = time.time() + 60
            while event == "step" and latest_step(sys.argv[2]) != wait_for and time.time() < deadline:
                time.sleep(0.02)
            os.kill(os.getpid(), signal.SIGKILL)
    train(cfg, sys.argv[2], callback=die)
    print("FINISHED")
""")


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_is_bitwise(tmp_path):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(config().to_dict()))
    run_dir = tmp_path / "killed"
    latest = []
    for event, step, wait_for in [("step", 7, 4), ("saved", 8, 0), ("step", 13, 12), ("none", 0, 0)]:
        p = subprocess.run([sys.executable, "-c", KILLER, str(cfg_file), str(run_dir), event, str(step),
                            str(wait_for)],
                           env=child_env(), capture_output=True, text=True, timeout=300)
        if event == "none":
            assert p.returncode == 0 and "FINISHED" in p.stdout, p.stderr[-3000:]
        else:
            assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
        latest.append(ckpt.latest_step(run_dir))
        if event == "saved":
            # really killed during the save: step 8 is either complete or left as a temporary
            # folder that the next run must ignore and clean up
            names = [p.name for p in (run_dir / "checkpoints").iterdir()]
            assert "8" in names or any(n.startswith("8.") for n in names), names
    # killed at step 7 (checkpoint 4 done); during the save of 8 (8 unfinished, or just finished);
    # at 13 (12 done); finished at 16
    assert latest[0] == 4 and latest[1] in (4, 8) and latest[2] == 12 and latest[3] == 16
    reference = train(config(), tmp_path / "ref")
    assert reference.finished
    a, b = saved_state(tmp_path / "ref"), saved_state(run_dir)
    assert a.step == b.step == 16
    # every leaf of the train state (params, Adam moments, counters), bitwise
    leaves_a, leaves_b = jax.tree_util.tree_flatten_with_path(a.value)[0], jax.tree.leaves(b.value)
    for (path, x), y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
    # no half-written checkpoint folders survive, and the metrics are one uninterrupted run
    assert all(p.name.isdigit() for p in (run_dir / "checkpoints").iterdir())
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == list(range(2, 17, 2))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path):
    cfg = config(steps=100000, checkpoint_every=0)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    run_dir = tmp_path / "r"
    p = subprocess.Popen([sys.executable, "-m", "jaxdict.cli", "train", "--config", str(cfg_file), "--out", str(run_dir)],
                         env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (run_dir / "metrics.jsonl").is_file() or not (run_dir / "metrics.jsonl").read_text().strip():
        assert p.poll() is None and time.time() < deadline, p.communicate()[1][-3000:]
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    step = ckpt.latest_step(run_dir)
    assert step is not None and step >= 2 and f"preempted at step {step}" in err
    assert not (run_dir / "result.json").exists()
    # the next run resumes from that checkpoint
    class Stop(Exception):
        pass

    def stop(event, s):
        raise Stop(s)

    messages = []
    with pytest.raises(Stop) as first:
        train(cfg, run_dir, callback=stop, log=messages.append)
    assert first.value.args[0] == step + 1
    assert messages == [f"resuming f from step {step}"]
