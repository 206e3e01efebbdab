"""CLT step throughput and per-device memory (`jaxdict bench clt`).

Kernel FLOPs of one dense CLT step (the per-layer SAE count of jaxdict.bench.step, 10·B·d·F, with
the decoder's share over all L(L+1)/2 blocks): encoders 6·B·L·d·F (forward + two backward matmuls),
decoders 6·B·(L(L+1)/2)·F·d. The sparse TopK step replaces the decoder's 6·B·blocks·F·d by
6·B·k·blocks·d (gather forward, row dots and scatter backward) and the encoder's two backward
matmuls by scatters (4·B·L·k·d), keeping the dense encoder forward 2·B·L·d·F.

Per-device memory: the compiled step's `memory_analysis()` (arguments = parameters + Adam state +
batch, temporaries), on meshes 1×m: with features split over `model`, everything but the batch,
b_dec and Adam's count falls as 1/m.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import numpy as np
import optax

from jaxdict.clt.config import CLTConfig
from jaxdict.clt.params import bytes_per_device
from jaxdict.clt.planted import planted_clt_rows
from jaxdict.clt.step import CLTTrainer
from jaxdict.train.mesh import make_mesh


def step_flops(cfg: CLTConfig, batch_size: int) -> float:
    B, L, d, F = batch_size, cfg.n_layers, cfg.d_model, cfg.n_features
    if cfg.arch == "topk" and cfg.decode == "sparse":
        return 2.0 * B * L * d * F + 4.0 * B * L * cfg.k * d + 6.0 * B * cfg.k * cfg.n_decoder_blocks * d
    return 6.0 * B * L * d * F + 6.0 * B * cfg.n_decoder_blocks * F * d


def _abstract_inputs(trainer: CLTTrainer, batch_size: int):
    params, opt_state = jax.eval_shape(trainer.init)
    as_struct = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)  # noqa: E731
    return (jax.tree.map(as_struct, params, trainer.params_sharding),
            jax.tree.map(as_struct, opt_state, trainer.opt_sharding),
            jax.ShapeDtypeStruct((batch_size, 2 * trainer.cfg.n_layers * trainer.cfg.d_model), np.float32,
                                 sharding=trainer.batch_sharding))


def step_memory(cfg: CLTConfig, batch_size: int, mesh_shape: tuple[int, int]) -> dict[str, Any]:
    """Per-device bytes of the compiled step on a data × model mesh (nothing is run)."""
    n = mesh_shape[0] * mesh_shape[1]
    trainer = CLTTrainer(cfg, optax.adam(1e-3), make_mesh(*mesh_shape, devices=jax.devices()[:n]))
    mem = trainer.step.lower(*_abstract_inputs(trainer, batch_size)).compile().memory_analysis()
    return {"mesh": f"{mesh_shape[0]}x{mesh_shape[1]}", "arguments": int(mem.argument_size_in_bytes),
            "temporaries": int(mem.temp_size_in_bytes), "outputs": int(mem.output_size_in_bytes),
            "params_formula": bytes_per_device(cfg, mesh_shape[1])}


def step_throughput(cfg: CLTConfig, batch_size: int, mesh_shape: tuple[int, int], iters: int = 5) -> dict[str, Any]:
    """Median seconds per step on planted cross-layer rows (after one compile+warm-up step)."""
    n = mesh_shape[0] * mesh_shape[1]
    trainer = CLTTrainer(cfg, optax.adam(1e-3), make_mesh(*mesh_shape, devices=jax.devices()[:n]))
    params, opt_state = trainer.init(seed=0)
    batch = jax.device_put(planted_clt_rows(batch_size, cfg.n_layers, cfg.d_model, seed=0), trainer.batch_sharding)
    params, opt_state, metrics = trainer.step(params, opt_state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        params, opt_state, metrics = trainer.step(params, opt_state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    return {"arch": cfg.arch + ("-sparse" if cfg.decode == "sparse" else ""), "mesh": f"{mesh_shape[0]}x{mesh_shape[1]}",
            "n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_features": cfg.n_features, "batch_size": batch_size,
            "seconds_median": seconds, "seconds_range": [min(times), max(times)],
            "tokens_per_s": batch_size / seconds, "kernel_gflops_per_s": step_flops(cfg, batch_size) / seconds / 1e9,
            "l0_per_layer": float(np.mean(np.asarray(metrics["l0"])))}


ARCH_CONFIGS = {
    "jumprelu": dict(arch="jumprelu"),
    "topk": dict(arch="topk", decode="sparse"),
    "topk-dense": dict(arch="topk", decode="dense"),
    "batchtopk": dict(arch="batchtopk"),
}


def run_clt_suite(n_layers: int, d_model: int, n_features: int, batch_size: int, k: int, archs: list[str],
                  mesh_shape: tuple[int, int], iters: int) -> dict[str, Any]:
    rows = []
    for name in archs:
        if name not in ARCH_CONFIGS:
            raise ValueError(f"CLT arch {name!r}; valid: {', '.join(ARCH_CONFIGS)}")
        extra = ARCH_CONFIGS[name]
        cfg = CLTConfig(n_layers=n_layers, d_model=d_model, n_features=n_features,
                        k=None if extra["arch"] == "jumprelu" else k, **extra)
        rows.append(step_throughput(cfg, batch_size, mesh_shape, iters))
        print(f"clt {rows[-1]['arch']:<12} mesh {rows[-1]['mesh']}  L {n_layers} d {d_model} F {n_features} "
              f"B {batch_size}: {rows[-1]['seconds_median'] * 1e3:.1f} ms/step, {rows[-1]['tokens_per_s']:.0f} tok/s, "
              f"{rows[-1]['kernel_gflops_per_s']:.1f} GFLOP/s", flush=True)
    return {"devices": [str(d) for d in jax.devices()[:1]], "jax": jax.__version__, "rows": rows}
