"""The sweep runner: skip finished points, resume interrupted ones, group shape-compatible points
onto one pass (equal to separate runs), the results table, and the refusals."""
import csv
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxdict.scaling.results_table import load_results_table
from jaxdict.store.split import split_mask
from jaxdict.sweep import SweepError, run_sweep, step_compute
from jaxdict.sweep.plan import load_points, plan_groups
from jaxdict.train import checkpoint as ckpt
from saved_state import saved_params

SWEEP = textwrap.dedent("""
    import dataclasses
    from jaxdict.sae.config import SAEConfig
    from jaxdict.train.config import DataConfig, MeshConfig, RunConfig, RunSettings
    from jaxdict.train.optim import OptimConfig

    BASE = RunConfig(
        sae=SAEConfig(arch="relu_l1", d_in=16, n_features=64, l1_coeff=2.0),
        optim=OptimConfig(lr=3e-3, total_steps=12),
        data=DataConfig(source="planted", batch_size=64, planted_rows=8192, planted_features=32,
                        eval_fraction=0.1, eval_rows=256, slab_rows=128, shuffle_buffer_rows=512),
        mesh=MeshConfig(data=2, model=4),
        run=RunSettings(log_every=4, checkpoint_every=4, progress=False),
    )

    def point(name, **sae):
        return dataclasses.replace(BASE, sae=dataclasses.replace(BASE.sae, **sae),
                                   run=dataclasses.replace(BASE.run, name=name))

    SWEEPS = {
        "small": lambda: [point("l1-a", l1_coeff=0.5), point("l1-b", l1_coeff=4.0),
                          point("topk", arch="topk", k=4)],
        "dup": lambda: [point("x"), point("x", l1_coeff=1.0)],
        # 60 steps x 256 rows = 15,360 tokens of ~7,370 training rows: about 2.1 epochs
        "long": lambda: [dataclasses.replace(point("long"), optim=dataclasses.replace(BASE.optim, total_steps=60),
                                             data=dataclasses.replace(BASE.data, batch_size=256))],
    }
""")


@pytest.fixture
def sweep_file(tmp_path):
    f = tmp_path / "exp.py"
    f.write_text(SWEEP)
    return f


def test_grouping_plan(sweep_file):
    groups = plan_groups(load_points(f"{sweep_file}:small"))
    assert [[p.run.name for p in g] for g in groups] == [["l1-a", "l1-b"], ["topk"]]
    assert [len(g) for g in plan_groups(load_points(f"{sweep_file}:small"), group=False)] == [1, 1, 1]


def test_runner_skips_finished_and_resumes_interrupted(sweep_file, tmp_path):
    out = tmp_path / "out"
    spec = f"{sweep_file}:small"

    def interrupt_topk(event, step):
        if event == "step" and step == 6 and (out / "l1-a" / "result.json").exists():
            raise KeyboardInterrupt  # the l1 group finished; the topk point stops after checkpoint 4

    logs = []
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out, log=logs.append, callback=interrupt_topk)
    assert "train group of 2: l1-a, l1-b" in logs
    assert (out / "l1-b" / "result.json").exists() and not (out / "topk" / "result.json").exists()
    assert ckpt.latest_step(out / "topk") == 4
    finished_mtime = os.path.getmtime(out / "l1-a" / "result.json")
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["name"] for r in rows] == ["l1-a", "l1-b"]

    logs = []
    assert run_sweep(spec, out, log=logs.append) == 0
    assert "skip (finished): l1-a, l1-b" in logs and "resuming topk from step 4" in logs
    assert os.path.getmtime(out / "l1-a" / "result.json") == finished_mtime
    table = load_results_table(out)
    assert [r.name for r in table.runs] == ["l1-a", "l1-b", "topk"]
    assert all(r.included and r.steps == 12 and r.tokens == 12 * 64 for r in table.runs)
    rows = {r["name"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["topk"]["k"] == "4" and rows["topk"]["l1_coeff"] == "" and rows["l1-a"]["l1_coeff"] == "0.5"
    assert float(rows["l1-a"]["flops"]) == 10 * 64 * 16 * 64 * 12  # C = 10·B·d·F per step
    # C counts the dense maths: the sparse TopK point is credited the same as a dense one.
    assert float(rows["topk"]["flops"]) == 10 * 64 * 16 * 64 * 12
    train_rows = int(split_mask(np.arange(8192), "train", 0.1).sum())  # planted rows, one document each
    assert float(rows["topk"]["epochs"]) == pytest.approx(12 * 64 / train_rows, rel=1e-5)
    assert rows["l1-a"]["group_size"] == "2" and rows["topk"]["diverged"] == "False"
    # a third run has nothing to do
    logs = []
    assert run_sweep(spec, out, log=logs.append) == 0
    assert sum(line.startswith("skip (finished)") for line in logs) == 2


def test_grouped_points_equal_separate_runs(sweep_file, tmp_path):
    spec = f"{sweep_file}:small"
    run_sweep(spec, tmp_path / "grouped", only=["l1-a", "l1-b"], log=lambda m: None)
    run_sweep(spec, tmp_path / "separate", only=["l1-a", "l1-b"], group=False, log=lambda m: None)
    for name in ("l1-a", "l1-b"):
        a = saved_params(tmp_path / "grouped" / name)
        b = saved_params(tmp_path / "separate" / name)
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=1e-6, err_msg=f"{name} {k}")
    grouped = {r["name"]: r for r in csv.DictReader(open(tmp_path / "grouped" / "results.csv"))}
    separate = {r["name"]: r for r in csv.DictReader(open(tmp_path / "separate" / "results.csv"))}
    assert grouped["l1-a"]["group_size"] == "2" and separate["l1-a"]["group_size"] == "1"
    assert float(grouped["l1-b"]["fvu"]) == pytest.approx(float(separate["l1-b"]["fvu"]), rel=1e-4)


def test_refusals(sweep_file, tmp_path):
    with pytest.raises(SweepError, match="several points alike: x"):
        run_sweep(f"{sweep_file}:dup", tmp_path / "d")
    with pytest.raises(SweepError, match=r"'topkk' \(close: topk\)"):
        run_sweep(f"{sweep_file}:small", tmp_path / "o", only=["topkk"])
    other = tmp_path / "other.py"
    other.write_text(SWEEP)
    run_sweep(f"{sweep_file}:small", tmp_path / "s", only=["topk"], log=lambda m: None)
    with pytest.raises(SweepError, match="belongs to another sweep"):
        run_sweep(f"{other}:small", tmp_path / "s")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something").write_text("x")
    with pytest.raises(SweepError, match="not empty"):
        run_sweep(f"{sweep_file}:small", tmp_path / "busy")


@pytest.mark.slow
def test_two_worker_processes(sweep_file, tmp_path):
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    p = subprocess.run([sys.executable, "-m", "jaxdict.cli", "sweep", f"{sweep_file}:small", "--out",
                        str(tmp_path / "w"), "--processes", "2"], env=env, capture_output=True, text=True,
                       timeout=400)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "w" / "results.csv")))
    assert sorted(r["name"] for r in rows) == ["l1-a", "l1-b", "topk"]
    assert "worker 1:" in p.stdout


def test_compute_is_the_dense_maths_whatever_decoder_runs():
    """Issue 14: C must not depend on `decode`; at k 32 the sparse kernel's FLOPs made an F 2048 run
    look 2.35x cheaper than an F 1024 one."""
    from jaxdict.sae.config import SAEConfig
    from jaxdict.train.config import RunConfig

    def compute(**sae):
        return step_compute(RunConfig(sae=SAEConfig(d_in=64, **sae)))

    b = RunConfig().data.batch_size
    sparse = compute(arch="topk", n_features=2048, k=32, decode="sparse")
    assert RunConfig(sae=SAEConfig(arch="topk", d_in=64, n_features=2048, k=32, decode="sparse")).sae.uses_sparse_decode
    assert sparse == compute(arch="topk", n_features=2048, k=32, decode="dense") == 10 * b * 64 * 2048
    assert sparse == compute(arch="relu_l1", n_features=2048) == compute(arch="jumprelu", n_features=2048)
    assert sparse == 2 * compute(arch="topk", n_features=1024, k=32, decode="sparse")


def test_a_run_that_repeats_its_data_is_warned_about(sweep_file, tmp_path):
    from jaxdict.scaling.compute import repeat_warning

    assert repeat_warning("a", 100, 100) is None
    assert "2.00 epochs of its 50 training rows" in repeat_warning("a", 100, 50)
    logs = []
    run_sweep(f"{sweep_file}:long", tmp_path / "o", log=logs.append)
    train_rows = int(split_mask(np.arange(8192), "train", 0.1).sum())
    warned = [m for m in logs if m.startswith("warning: long trains on 15,360 tokens")]
    assert len(warned) == 1 and f"{15360 / train_rows:.2f} epochs of its {train_rows:,} training rows" in warned[0], logs
    row = next(csv.DictReader(open(tmp_path / "o" / "results.csv")))
    assert float(row["epochs"]) == pytest.approx(15360 / train_rows, rel=1e-5)
    # a run within one epoch is not warned about
    logs = []
    run_sweep(f"{sweep_file}:small", tmp_path / "s", only=["topk"], log=logs.append)
    assert not [m for m in logs if m.startswith("warning:")]


def test_shipped_sweeps_group_as_documented():
    l1 = plan_groups(load_points("experiments/l1_sweep.py:tiny"))
    assert [len(g) for g in l1] == [3]  # λ only: one pass
    lr = plan_groups(load_points("experiments/lr_sweep.py:tiny"))
    assert [len(g) for g in lr] == [3, 3]  # one pass per (F, steps) pair
    sm = plan_groups(load_points("experiments/scaling_monosemanticity.py:tiny"))
    assert all(len(g) == 1 for g in sm) and len(sm) == 6  # shapes or step counts differ
    topk = plan_groups(load_points("experiments/topk_grid.py:tiny"))
    assert all(len(g) == 1 for g in topk) and len(topk) == 8


def test_table_only_collects_points_trained_one_by_one(sweep_file, tmp_path):
    from jaxdict.train.config import load_run_configs
    from jaxdict.train.driver import train

    out = tmp_path / "slices"
    (point,) = load_run_configs(f"{sweep_file}:topk")  # as one TPU slice would run it
    train(point, out / "topk", log=lambda m: None)
    logs = []
    assert run_sweep(f"{sweep_file}:small", out, table_only=True, log=logs.append) == 2
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["name"] for r in rows] == ["topk"] and not (out / "l1-a").exists()
