"""Roofline predictions for GPUs, which cannot be compiled for without one: the step is compiled by
this machine's XLA (CPU) — same HLO before fusion, same FLOPs — and its per-device FLOPs, HBM bytes
and sorts are priced with the GPU's data sheet (jaxdict/plan/chips.py). XLA:GPU fuses differently
from XLA:CPU, so the HBM term is an estimate; the FLOP term is exact for the program.

    python -m jaxdict.plan.gpu --chip h200 --dtype bfloat16 --d-in 2304 --features 65536 --batch-size 4096 --k 64

predicts what `jaxdict bench step` (same flags) measures on that GPU, per architecture.
"""
from __future__ import annotations

import argparse

import jax

from jaxdict.plan.analysis import analyse
from jaxdict.plan.chips import CHIPS, Chip, Topology
from jaxdict.plan.roofline import roofline
from jaxdict.plan.train_plan import TrainPlan, compute_dtype, lower_train_step
from jaxdict.sae.config import ConfigError, SAEConfig
from jaxdict.train.config import DataConfig, MeshConfig, RunConfig
from jaxdict.train.optim import OptimConfig


def plan_on_local_compiler(cfg: RunConfig, topo: Topology) -> TrainPlan:
    """Compile `cfg`'s step with the local backend's devices standing in for the GPUs."""
    devices = jax.devices()
    if topo.n_chips > len(devices):
        raise ConfigError(f"{topo.name}: estimating for {topo.n_chips} GPUs needs as many local devices "
                          f"(have {len(devices)}; XLA_FLAGS=--xla_force_host_platform_device_count=N)")
    devices = devices[: topo.n_chips]
    lowered, parts = lower_train_step(cfg, devices)
    compiled = lowered.compile()
    cost = analyse(compiled, parts, topo.chip.hbm_bytes, devices)
    n_data = cfg.mesh.data or topo.n_chips // cfg.mesh.model
    return TrainPlan(cfg, topo, (n_data, cfg.mesh.model), None, cost,
                     roofline(cost, topo.chip, compute_dtype(cfg), cfg.data.batch_size))


def predict_bench_step(chip: Chip, *, d_in: int, n_features: int, batch_size: int, k: int,
                       compute_dtype: str) -> list[dict]:
    """One row per architecture of `jaxdict bench step`'s suite: predicted step time and MFU."""
    from jaxdict.bench.step import DEFAULT_ARCHS, kernel_step_flops

    rows = []
    topo = Topology(chip, (1,))
    for arch, overrides in DEFAULT_ARCHS:
        sae = SAEConfig(arch=arch, d_in=d_in, n_features=n_features, k=k, compute_dtype=compute_dtype, **overrides)
        # bench step's optimiser and a random batch; the data source does not enter the step.
        cfg = RunConfig(sae=sae, optim=OptimConfig(lr=1e-4, total_steps=10_000),
                        data=DataConfig(source="planted", batch_size=batch_size), mesh=MeshConfig(data=1, model=1))
        plan = plan_on_local_compiler(cfg, topo)
        r = plan.roofline
        flops = kernel_step_flops(sae, batch_size)
        rows.append({"arch": arch, "decode": "sparse" if sae.uses_sparse_decode else "dense",
                     "model_flops": flops, "compiled_flops": plan.cost.flops,
                     "hbm_gb": plan.cost.bytes_accessed / 1e9, "sort_gb": plan.cost.sort_bytes / 1e9,
                     "compute_ms": 1e3 * r.compute_s, "hbm_ms": 1e3 * r.memory_s, "sort_ms": 1e3 * r.sort_s,
                     "step_ms": 1e3 * r.step_s, "step_ms_sort_one_pass": 1e3 * _one_pass_step(plan, chip),
                     "tokens_per_s": r.tokens_per_s, "mfu": flops / r.step_s / chip.peak_flops(compute_dtype),
                     "bound": r.bound})
    return rows


def _one_pass_step(plan: TrainPlan, chip: Chip) -> float:
    """The step if every sort/top-k read its operand once (a fused GPU top-k kernel's floor)."""
    r = plan.roofline
    one_pass = sum(s.operand_bytes for s in plan.cost.sorts) / chip.hbm_bw
    return max(r.compute_s, r.memory_s - r.sort_s + one_pass) + r.ici_s + r.dcn_s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chip", default="h200", choices=[c for c in CHIPS if CHIPS[c].kind == "gpu"])
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--d-in", type=int, default=2304)
    p.add_argument("--features", type=int, default=65536)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--k", type=int, default=64)
    a = p.parse_args(argv)
    chip = CHIPS[a.chip]
    rows = predict_bench_step(chip, d_in=a.d_in, n_features=a.features, batch_size=a.batch_size, k=a.k,
                              compute_dtype=a.dtype)
    print(f"predicted `jaxdict bench step --dtype {a.dtype} --d-in {a.d_in} --features {a.features} "
          f"--batch-size {a.batch_size} --k {a.k}` on {chip.name} ({chip.source})")
    print("| arch | decode | model FLOPs | compute ms | HBM ms (sort) | step ms | step ms, 1-pass top-k | tok/s | MFU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['decode']} | {r['model_flops']:.3e} | {r['compute_ms']:.3f} | "
              f"{r['hbm_ms']:.3f} ({r['sort_ms']:.3f}) | {r['step_ms']:.3f} | {r['step_ms_sort_one_pass']:.3f} | "
              f"{r['tokens_per_s']:,.0f} | {100 * r['mfu']:.1f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
