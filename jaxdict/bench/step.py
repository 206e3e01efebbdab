"""Train-step throughput for every architecture: tokens/s, kernel FLOP/s, and the machine's matmul peak.

Kernel FLOPs: what the step that ran executes (DESIGN.md §7), with the decoder bias folded into the
encoder bias; MFU divides these by the peak. They are not the training compute C of a scaling fit,
which counts the dense maths whatever decoder ran (jaxdict.scaling.compute):
  dense step (ReLU-L1, JumpReLU, BatchTopK, dense TopK): 10·B·d·F
    forward: encoder 2·B·d·F + decoder 2·B·d·F; backward: dW_dec, df, dW_enc at 2·B·d·F each
  sparse TopK step: 2·B·d·F (dense encoder forward) + 8·B·k·d (gathered pre-activations and
    decoder forward, and their two backward scatters)
The peak is a plain jitted [B, d] @ [d, F] matmul measured in the same run, so ratios are taken side
by side on a shared, noisy machine.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdict.sae.config import SAEConfig
from jaxdict.sae.params import SAEParams
from jaxdict.train.mesh import make_mesh
from jaxdict.train.optim import OptimConfig
from jaxdict.train.state import create_state
from jaxdict.train.step import TrainStep
from jaxdict.bench.steady_state import dead_ids, with_dead_latents


# Dense peak FLOP/s per chip by compute dtype, from the vendors' data sheets: NVIDIA H100 SXM5
# (and H200, the same compute die) 989.4 TFLOP/s bf16 and 494.7 TF32 tensor-core dense, 66.9 fp32
# non-tensor; H100 PCIe 756.5 / 378 / 51.2; A100 312 / 156 / 19.5. Google Cloud TPU system
# architecture pages: v4 275, v5e 197, v5p 459, v6e (Trillium) 918 TFLOP/s bf16. An fp32 matmul
# on a GPU runs as TF32 under JAX's default precision, so fp32 steps are measured against TF32.
_PEAK_TFLOPS = (
    # (substring of device_kind, lower-case), {dtype: TFLOP/s}
    ("h200", {"bfloat16": 989.4, "float32": 494.7}),
    ("h100 pcie", {"bfloat16": 756.5, "float32": 378.0}),
    ("h100", {"bfloat16": 989.4, "float32": 494.7}),
    ("a100", {"bfloat16": 312.0, "float32": 156.0}),
    ("tpu v4", {"bfloat16": 275.0}),
    ("tpu v5 lite", {"bfloat16": 197.0}),
    ("tpu v5e", {"bfloat16": 197.0}),
    ("tpu v5p", {"bfloat16": 459.0}),
    ("tpu v5", {"bfloat16": 459.0}),
    ("tpu v6", {"bfloat16": 918.0}),
)


def device_peak_flops(device_kind: str, compute_dtype: str) -> float | None:
    """Data-sheet dense peak FLOP/s of one chip for this compute dtype, or None where unknown (CPUs:
    there the ceiling is measured, see measure_matmul_peak)."""
    kind = device_kind.lower()
    for pattern, peaks in _PEAK_TFLOPS:
        if pattern in kind:
            tflops = peaks.get(compute_dtype)
            return None if tflops is None else tflops * 1e12
    return None


def kernel_step_flops(cfg: SAEConfig, batch_size: int) -> float:
    """FLOPs the compiled step executes for this decode path (see the module docstring)."""
    b, d, f = batch_size, cfg.d_in, cfg.n_features
    if cfg.uses_sparse_decode:
        return 2.0 * b * d * f + 8.0 * b * cfg.k * d
    return 10.0 * b * d * f


def _time_calls(fn, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def measure_matmul_peak(batch_size: int, d_in: int, n_features: int, dtype: str = "float32",
                        warmup: int = 2, iters: int = 5) -> dict[str, float]:
    """FLOP/s of one [B, d] @ [d, F] matmul: the practical ceiling of an SAE step on this machine."""
    # Random operands: constant ones or zeros can run faster than real data does (a bf16 GEMM ran
    # 13 % faster on zeros than on random data on an H200, .library/device/METHOD.md).
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((batch_size, d_in), dtype=np.float32), dtype)
    w = jnp.asarray(rng.standard_normal((d_in, n_features), dtype=np.float32), dtype)
    matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    times = _time_calls(lambda: matmul(a, w), warmup, iters)
    best = min(times)
    return {"matmul_s": best, "matmul_flops_per_s": 2.0 * batch_size * d_in * n_features / best}


def measure_step(cfg: SAEConfig, batch_size: int, mesh_shape: tuple[int, int] = (1, 1),
                 warmup: int = 2, iters: int = 5, seed: int = 0, batch: np.ndarray | None = None,
                 params: SAEParams | None = None, input_scale: float = 1.0, dead_frac: float = 0.0) -> dict[str, Any]:
    """Median and best wall time of the compiled step (after warm-up), on `batch` (default: random
    normal data) from `params` (default: a fresh initialisation) trained on x · input_scale. Which
    latents fire decides the cost of the sparse paths, so real activations and a trained SAE can
    give other numbers. `dead_frac` of the latents start (and stay) dead, so AuxK runs on every
    timed step as in a run's steady state (bench/steady_state.py)."""
    optim = OptimConfig(lr=1e-4, total_steps=10_000)
    n_devices = mesh_shape[0] * mesh_shape[1]
    mesh = make_mesh(*mesh_shape, devices=jax.devices()[:n_devices])
    state, shardings = create_state(cfg, optim, mesh, seed=seed, input_scale=input_scale)
    if params is not None:
        # From host copies: the step donates its state, which must not delete the caller's arrays.
        state = state.replace(params=jax.device_put(jax.tree.map(np.asarray, params), shardings.params))
    state = jax.device_put(with_dead_latents(state, cfg, dead_ids(cfg.n_features, dead_frac)), shardings)
    step = TrainStep(cfg, optim, mesh, shardings, batch_size)
    if batch is None:
        batch = np.random.default_rng(seed).standard_normal((batch_size, cfg.d_in), dtype=np.float32)
    batch = jax.device_put(np.asarray(batch, np.float32), step.batch_sharding)
    holder = {"state": state}

    def one():
        holder["state"], metrics = step(holder["state"], batch)
        return metrics

    compile_start = time.perf_counter()
    first_metrics = jax.device_get(one())
    compile_s = time.perf_counter() - compile_start
    times = _time_calls(one, max(warmup - 1, 0), iters)
    median, best = float(np.median(times)), float(min(times))
    flops = kernel_step_flops(cfg, batch_size)
    return {
        "arch": cfg.arch,
        "decode": "sparse" if cfg.uses_sparse_decode else "dense",
        "compute_dtype": cfg.compute_dtype,
        "d_in": cfg.d_in,
        "n_features": cfg.n_features,
        "k": cfg.k if cfg.arch in ("topk", "batchtopk") else None,
        "batch_size": batch_size,
        "mesh": f"{mesh_shape[0]}x{mesh_shape[1]}",
        "dead_frac": dead_frac,
        "first_call_s": compile_s,
        "step_s_median": median,
        "step_s_best": best,
        "tokens_per_s": batch_size / median,
        "kernel_flops": flops,
        "kernel_flops_per_s": flops / median,
        "mfu": _mfu(flops / median, cfg.compute_dtype, n_devices),
        # What the timed steps worked on: ~1 for a fresh SAE, its trained value with --from-run.
        "first_step_fvu": float(first_metrics["fvu"]),
        "first_step_decode_fallback": float(first_metrics.get("decode_fallback", 0.0)),
    }


def _mfu(flops_per_s: float, compute_dtype: str, n_devices: int) -> float | None:
    """Model FLOP utilisation: model FLOPs per second over the data-sheet peak of the devices used."""
    peak = device_peak_flops(jax.devices()[0].device_kind, compute_dtype)
    return None if peak is None else flops_per_s / (peak * n_devices)


DEFAULT_ARCHS = (
    ("relu_l1", {}),
    ("topk", {"decode": "sparse"}),
    ("topk", {"decode": "dense"}),
    ("batchtopk", {"decode": "sparse"}),
    ("batchtopk", {"decode": "dense"}),
    ("jumprelu", {}),
)


def run_step_suite(d_in: int = 640, n_features: int = 16384, batch_size: int = 4096, k: int = 64,
                   compute_dtype: str = "float32", archs=DEFAULT_ARCHS, iters: int = 5,
                   mesh_shape: tuple[int, int] = (1, 1), log=print, batch: np.ndarray | None = None,
                   trained: tuple[str, SAEParams, float] | None = None, dead_frac: float = 0.05) -> dict[str, Any]:
    """Every step of `archs` at one shape, beside the matmul ceiling. `trained` = (arch, params,
    input_scale) starts the rows of that architecture from those parameters, trained on
    x · input_scale (the others from a fresh init). Each TopK-family step is timed twice: fresh (nothing
    dead, AuxK skipped) and with `dead_frac` of its latents dead (AuxK on every step), what a run
    does once latents die; dead_frac=0 skips the second."""
    # The ceiling in the steps' own compute dtype: a bf16 step against an fp32 GEMM would read ~2x.
    peak = measure_matmul_peak(batch_size, d_in, n_features, compute_dtype, iters=iters)
    log(f"matmul ceiling [{batch_size}x{d_in}]@[{d_in}x{n_features}] {compute_dtype}: "
        f"{peak['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s")
    rows = []
    for arch, overrides in archs:
        cfg = SAEConfig(arch=arch, d_in=d_in, n_features=n_features, k=k, compute_dtype=compute_dtype,
                        **overrides)
        params, scale = (trained[1], trained[2]) if trained is not None and trained[0] == arch else (None, 1.0)
        for frac in [0.0, dead_frac] if arch in ("topk", "batchtopk") and dead_frac > 0 else [0.0]:
            rows.append(_suite_row(cfg, batch_size, mesh_shape, iters, batch, params, scale, frac, peak, log))
    return {"peak": peak, "steps": rows, "devices": [str(d) for d in jax.devices()[:1]],
            "jax": jax.__version__}


def _suite_row(cfg, batch_size, mesh_shape, iters, batch, params, scale, dead_frac, peak, log) -> dict[str, Any]:
    row = measure_step(cfg, batch_size, mesh_shape=mesh_shape, iters=iters, batch=batch, params=params,
                       input_scale=scale, dead_frac=dead_frac)
    row["from_trained"] = params is not None
    row["fraction_of_matmul_peak"] = row["kernel_flops_per_s"] / peak["matmul_flops_per_s"]
    # Tokens/s a step would reach if it ran its FLOPs at the measured matmul ceiling.
    row["tokens_per_s_at_ceiling"] = batch_size * peak["matmul_flops_per_s"] / row["kernel_flops"]
    mfu = "" if row["mfu"] is None else f", MFU {100 * row['mfu']:.1f}%"
    dead = f" {100 * dead_frac:.0f}% dead" if dead_frac else " fresh"
    log(f"{cfg.arch:10s} {row['decode']:6s} {cfg.compute_dtype:8s}{dead:9s} {row['tokens_per_s']:9.0f} tok/s  "
        f"{row['kernel_flops_per_s'] / 1e9:6.1f} GFLOP/s  ({100 * row['fraction_of_matmul_peak']:.0f}% of matmul peak{mfu})")
    return row
