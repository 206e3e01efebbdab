"""`jaxdict bench`: the step suite runs every architecture and reports consistent numbers (no
timing is asserted: speed lives in BENCHMARKS.md), and the MFU peak table reads device kinds."""
from __future__ import annotations

import json
import subprocess
import sys
import types

import numpy as np
import pytest

from jaxdict.bench import step as bench_step
from jaxdict.bench.step import DEFAULT_ARCHS, device_peak_flops, run_step_suite
from jaxdict.sae.config import SAEConfig


@pytest.mark.parametrize("kind,dtype,tflops", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4),
    ("NVIDIA H100 80GB HBM3", "float32", 494.7),
    ("NVIDIA H100 PCIe", "bfloat16", 756.5),
    ("NVIDIA H200", "bfloat16", 989.4),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312.0),
    ("TPU v5 lite", "bfloat16", 197.0),
    ("TPU v4", "bfloat16", 275.0),
    ("TPU v4", "float32", None),
    ("cpu", "float32", None),
])
def test_device_peak_flops(kind, dtype, tflops):
    peak = device_peak_flops(kind, dtype)
    assert peak == (None if tflops is None else tflops * 1e12)


@pytest.mark.parametrize("mesh_shape", [(1, 1), (2, 4)])
def test_step_suite_reports_every_architecture(mesh_shape, devices):
    lines = []
    result = run_step_suite(d_in=16, n_features=64, batch_size=32, k=4, archs=DEFAULT_ARCHS, iters=1,
                            mesh_shape=mesh_shape, log=lines.append)
    # TopK-family steps twice: fresh, and with 5 % of the latents dead (AuxK on every timed step).
    assert [(r["arch"], r["decode"], r["dead_frac"]) for r in result["steps"]] == [
        ("relu_l1", "dense", 0.0), ("topk", "sparse", 0.0), ("topk", "sparse", 0.05), ("topk", "dense", 0.0),
        ("topk", "dense", 0.05), ("batchtopk", "sparse", 0.0), ("batchtopk", "sparse", 0.05),
        ("batchtopk", "dense", 0.0), ("batchtopk", "dense", 0.05), ("jumprelu", "dense", 0.0)]
    rows = result["steps"]
    dense, sparse = 10 * 32 * 16 * 64, 2 * 32 * 16 * 64 + 8 * 32 * 4 * 16  # kernel FLOPs (DESIGN.md §7)
    for row in rows:
        assert row["kernel_flops"] == (sparse if row["decode"] == "sparse" else dense), row
        assert 0 < row["step_s_best"] <= row["step_s_median"]
        assert row["mesh"] == f"{mesh_shape[0]}x{mesh_shape[1]}"
        assert row["mfu"] is None  # no data-sheet peak for a CPU: the matmul ceiling is measured instead
    assert result["peak"]["matmul_flops_per_s"] > 0
    assert len(lines) == 1 + len(result["steps"])


def test_step_rates_come_from_the_measured_times(monkeypatch, devices):
    """With a clock whose timed intervals cycle 0.3 s, 0.1 s, 0.2 s, every median is 0.2 s and every
    best 0.1 s, so each rate is known without the code's own formulas."""
    calls = []

    def perf_counter():
        calls.append(None)
        pair, end = divmod(len(calls) - 1, 2)  # calls alternate start, end
        return 10.0 * pair + (0.3, 0.1, 0.2)[pair % 3] * end

    monkeypatch.setattr(bench_step, "time", types.SimpleNamespace(perf_counter=perf_counter))
    result = run_step_suite(d_in=16, n_features=64, batch_size=32, k=4, archs=(("relu_l1", {}),), iters=3,
                            log=lambda m: None)
    row = result["steps"][0]
    assert (row["step_s_median"], row["step_s_best"]) == (pytest.approx(0.2), pytest.approx(0.1))
    assert row["tokens_per_s"] == pytest.approx(160.0)  # 32 tokens per 0.2 s median step
    assert row["kernel_flops_per_s"] == pytest.approx(10 * 32 * 16 * 64 / 0.2)
    # the matmul ceiling is timed by its best call: 2·B·d·F FLOPs in 0.1 s
    assert result["peak"]["matmul_flops_per_s"] == pytest.approx(2 * 32 * 16 * 64 / 0.1)
    assert row["fraction_of_matmul_peak"] == pytest.approx(2.5)


def test_bench_command_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "jaxdict.cli", "bench", "step", "--d-in", "16", "--features", "64", "--batch-size",
         "32", "--k", "4", "--archs", "relu_l1,batchtopk,batchtopk-dense", "--iters", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [(r["arch"], r["decode"], r["dead_frac"]) for r in result["steps"]] == [
        ("relu_l1", "dense", 0.0), ("batchtopk", "sparse", 0.0), ("batchtopk", "sparse", 0.05),
        ("batchtopk", "dense", 0.0), ("batchtopk", "dense", 0.05)]
    bad = subprocess.run([sys.executable, "-m", "jaxdict.cli", "bench", "step", "--archs", "relu,topk"],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "unknown ['relu']" in bad.stderr
    # A store error is bad input too: one line naming the path, no traceback.
    missing = subprocess.run([sys.executable, "-m", "jaxdict.cli", "bench", "step", "--store", str(tmp_path / "none")],
                             capture_output=True, text=True, timeout=600)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"jaxdict bench: error: no activation store at {tmp_path / 'none'} (missing store.json)"


def test_bench_steady_runs_the_decode_and_dtype_asked_for(tmp_path):
    """`bench steady --decode dense --dtype bfloat16 --sweep 0` (the GPU user's step,
    experiments/gpu_auxk.sh): those settings are recorded, and no sweep rows run."""
    out = tmp_path / "steady.json"
    proc = subprocess.run(
        [sys.executable, "-m", "jaxdict.cli", "bench", "steady", "--d-in", "16", "--features", "256", "--batch-size",
         "32", "--k", "4", "--mesh", "1x1", "--rounds", "1", "--decode", "dense", "--dtype", "bfloat16",
         "--sweep", "0", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert (result["shape"]["decode"], result["shape"]["compute_dtype"]) == ("dense", "bfloat16")
    assert [r["variant"] for r in result["steps"]] == [
        "1x1 fresh", "1x1 dead AuxK", "1x1 dead no-AuxK", "1x1 dead AuxK logged", "1x1 dead AuxK no metrics"]
    assert result["ratios"][0]["ratio"] == "1x1 dead AuxK / 1x1 dead no-AuxK"


def test_bench_step_saelens_pairs_fresh_with_fresh_and_dead_with_dead(tmp_path):
    """SAELens's step is timed fresh and, for TopK, with the same latents dead (its AuxK running),
    and each ratio divides our step in the same state by it."""
    pytest.importorskip("sae_lens")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "jaxdict.cli", "bench", "step", "--d-in", "16", "--features", "64", "--batch-size",
         "32", "--k", "4", "--archs", "relu_l1,topk", "--iters", "1", "--saelens", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [(r["arch"], r["dead_frac"]) for r in result["saelens"]] == [
        ("relu_l1", 0.0), ("topk", 0.0), ("topk", pytest.approx(3 / 64))]
    ratios = [line for line in proc.stdout.splitlines() if line.startswith("SAELens")]
    assert len(ratios) == 3 and all("jaxdict/SAELens = " in line for line in ratios)
    assert "fresh" in ratios[1] and "5% dead" in ratios[2]


def test_bench_from_a_trained_run_on_store_rows(tmp_path, devices):
    """--from-run starts the run's architecture from its checkpoint at its input scale (the first
    step reconstructs as well as the run did), --store steps on real rows."""
    import dataclasses

    from jaxdict.store import StoreWriter
    from jaxdict.testing import planted_dictionary
    from jaxdict.train.config import DataConfig, MeshConfig, RunConfig, RunSettings
    from jaxdict.train.driver import train
    from jaxdict.train.optim import OptimConfig

    planted = planted_dictionary(d_in=16, n_planted=32, seed=0)
    rows, _ = planted.sample(4096, seed=1)
    rows = (rows * 40.0 + 7.0).astype(np.float32)  # raw units far from 1, so a wrong scale shows
    writer = StoreWriter.open(str(tmp_path / "store"), d_in=16, dtype="float32", metadata={"model": "m", "hook": "h"})
    n = rows.shape[0]
    writer.append(rows, np.zeros(n, np.int32), np.arange(n, dtype=np.int32) // 64, np.arange(n, dtype=np.int32) % 64)
    writer.close()
    cfg = RunConfig(
        sae=SAEConfig(arch="batchtopk", d_in=16, n_features=64, k=4),
        optim=OptimConfig(lr=3e-3, total_steps=150),
        data=DataConfig(source="store", store=str(tmp_path / "store"), model="m", hook="h", batch_size=64,
                        eval_fraction=0.1, eval_rows=256, slab_rows=128, shuffle_buffer_rows=512),
        mesh=MeshConfig(data=1, model=1),
        run=RunSettings(name="r", log_every=50, checkpoint_every=150, progress=False),
    )
    result = train(cfg, tmp_path / "run")
    assert result.eval["fvu"] < 0.5
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "jaxdict.cli", "bench", "step", "--from-run", str(tmp_path / "run"), "--store",
         str(tmp_path / "store"), "--store-offset", "100", "--batch-size", "64", "--archs", "batchtopk,relu_l1", "--dead-frac", "0",
         "--iters", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    trained_row, fresh_row = json.loads(out.read_text())["steps"]
    assert (trained_row["d_in"], trained_row["n_features"], trained_row["k"]) == (16, 64, 4)
    assert trained_row["from_trained"] and not fresh_row["from_trained"]
    assert trained_row["first_step_fvu"] < 0.5 < fresh_row["first_step_fvu"]
    too_far = subprocess.run(
        [sys.executable, "-m", "jaxdict.cli", "bench", "step", "--store", str(tmp_path / "store"), "--d-in", "16",
         "--store-offset", "4090", "--batch-size", "64", "--archs", "relu_l1"], capture_output=True, text=True,
        timeout=600)
    assert too_far.returncode != 0 and "the store has 4096 rows" in too_far.stderr


def test_machine_info_names_the_cpu_and_its_gemm_instruction_sets(tmp_path):
    from jaxdict.bench.gemm import machine_info

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n"
                       "flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16 amx_tile amx_bf16\n\n"
                       "processor\t: 1\nmodel name\t: second core, not read\n")
    info = machine_info(str(cpuinfo))
    assert info["cpu"] == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert info["isa"] == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]
    assert machine_info(str(tmp_path / "absent"))["isa"] == []


def test_gemm_suite_times_every_candidate_at_every_shape(devices):
    from jaxdict.bench.gemm import has_native_bf16, run_gemm_suite

    lines = []
    result = run_gemm_suite(batch_size=32, d_in=16, n_features=64, rounds=2, square=48, log=lines.append)
    assert list(result["shapes"]) == ["encoder [B,d]x[d,F]", "decoder [B,F]x[F,d]", "square"]
    assert (result["shapes"]["encoder [B,d]x[d,F]"]["m"], result["shapes"]["decoder [B,F]x[F,d]"]["k"]) == (32, 64)
    for shape in result["shapes"].values():
        cands = shape["candidates"]
        # torch is installed wherever the SAELens tests run (CI installs the saelens extra)
        bf16 = {"torch bf16"} if has_native_bf16(result["machine"]["isa"]) else set()
        assert set(cands) == {"xla fp32", "xla fp32 donated output", "xla bf16", "numpy fp32", "numpy fp32 out=",
                              "torch fp32", "torch fp32 out="} | bf16
        for row in cands.values():
            assert 0 < row["gflops_worst"] <= row["gflops_median"] <= row["gflops_best"]
    assert result["machine"]["cpu"] and len(lines) == 1 + 3 * (1 + len(cands))
