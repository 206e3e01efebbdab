"""Loader throughput at d_in = 640 for bf16 and fp32 stores, next to the train step's consumption.

    .venv/bin/python -m jaxdict.bench.loader [--rows 131072] [--batch 4096] [--batches 160] [--json]

For each store dtype a store of `rows` random rows is written to a temporary folder (the write
rate is reported too), then the loader (StoreSource, global shuffle of slabs, local shuffle of rows
in a window, bf16 -> fp32 cast) is timed over `batches` batches, twice: local numpy batches and
global jax.Arrays (make_array_from_process_local_data, block_until_ready). The store was just
written, so its files sit in the OS page cache: this measures decode + checksum + shuffle + copy,
not the disk. The train step (jaxdict.train, if importable) is timed on the same batch shape so
the two rates can be compared in one run on one machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from typing import Any

import jax
import numpy as np

from jaxdict.data import ActivationLoader, StoreSource
from jaxdict.store import StoreWriter

D_IN = 640  # Gemma 3 270M residual width (DESIGN.md §3)


def _write_store(path: str, rows: int, d_in: int, dtype: str, seed: int) -> float:
    """Write `rows` random rows; returns rows per second."""
    rng = np.random.default_rng(seed)
    block = 16384
    t0 = time.perf_counter()
    with StoreWriter.open(path, d_in=d_in, dtype=dtype, metadata={"bench": "loader"}) as w:
        for lo in range(0, rows, block):
            n = min(block, rows - lo)
            acts = rng.standard_normal((n, d_in), dtype=np.float32)
            w.append(acts, np.zeros(n, np.int32), np.arange(lo, lo + n) // 256,
                     np.arange(lo, lo + n) % 256)
    return rows / (time.perf_counter() - t0)


def _time_batches(iterator, batches: int, warmup: int, block: bool) -> float:
    """Seconds per batch over `batches` batches after `warmup` untimed ones."""
    with iterator:
        for _ in range(warmup):
            b = next(iterator)
        t0 = time.perf_counter()
        for _ in range(batches):
            b = next(iterator)
            if block:
                b.block_until_ready()
        return (time.perf_counter() - t0) / batches


def _train_step_seconds(batch_size: int, d_in: int, steps: int, arch: str, n_features: int,
                        k: int) -> dict[str, Any]:
    """Seconds per train step of jaxdict.train on a [batch_size, d_in] batch (None if unavailable)."""
    try:
        from jaxdict.sae.config import SAEConfig
        from jaxdict.train.mesh import make_mesh
        from jaxdict.train.optim import OptimConfig
        from jaxdict.train.state import create_state
        from jaxdict.train.step import TrainStep

        sae_cfg = SAEConfig(arch=arch, d_in=d_in, n_features=n_features, k=k)
        optim_cfg = OptimConfig(total_steps=1000)
        mesh = make_mesh()
        state, shardings = create_state(sae_cfg, optim_cfg, mesh)
        step = TrainStep(sae_cfg, optim_cfg, mesh, shardings, batch_size)
        x = jax.device_put(np.random.default_rng(0).standard_normal((batch_size, d_in), np.float32),
                           step.batch_sharding)
        state, metrics = step(state, x)  # compile
        jax.block_until_ready(metrics)
        t0 = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, x)
        jax.block_until_ready(metrics)
        seconds = (time.perf_counter() - t0) / steps
    except Exception as e:  # noqa: BLE001 - the train code is another module; report, don't die
        return {"available": False, "error": f"{type(e).__name__}: {e}"}
    return {"available": True, "arch": arch, "n_features": n_features, "k": k,
            "seconds_per_step": seconds, "tokens_per_s": batch_size / seconds}


def measure_loader_throughput(
    rows: int = 131072,
    global_batch_size: int = 4096,
    batches: int = 160,
    d_in: int = D_IN,
    dtypes: tuple[str, ...] = ("bfloat16", "float32"),
    slab_rows: int = 4096,
    shuffle_buffer_rows: int = 32768,
    read_threads: int = 2,
    train_step: bool = True,
    train_arch: str = "topk",
    train_features: int = 16384,
    train_k: int = 32,
    train_steps: int = 3,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Throughput of the loader per store dtype (tokens/s, GB/s of stored bytes), and of the step.

    Returns {"config": {...}, "loader": {dtype: {...}}, "train_step": {...}, "ratio": {...}}, where
    ratio[dtype] = loader global-array tokens/s / train-step tokens/s.
    """
    out: dict[str, Any] = {
        "config": {
            "rows": rows, "d_in": d_in, "global_batch_size": global_batch_size,
            "batches": batches, "slab_rows": slab_rows,
            "shuffle_buffer_rows": shuffle_buffer_rows, "read_threads": read_threads,
            "devices": [str(d) for d in jax.devices()], "machine": platform.machine(),
            "cpus": __import__("os").cpu_count(), "jax": jax.__version__,
        },
        "loader": {},
    }
    root = tempfile.mkdtemp(prefix="jaxdict-bench-loader-", dir=workdir)
    try:
        for dtype in dtypes:
            path = f"{root}/{dtype}"
            write_rows_per_s = _write_store(path, rows, d_in, dtype, seed=0)
            bytes_per_row = d_in * (2 if dtype == "bfloat16" else 4)
            source = StoreSource(path)

            def make(src=source):
                return ActivationLoader(src, global_batch_size=global_batch_size, seed=0,
                                        slab_rows=slab_rows, shuffle_buffer_rows=shuffle_buffer_rows,
                                        read_threads=read_threads)

            local_s = _time_batches(make().iter_local(), batches, warmup=2, block=False)
            global_s = _time_batches(iter(make()), batches, warmup=2, block=True)
            result = {"write_tokens_per_s": write_rows_per_s}
            for name, sec in (("local_numpy", local_s), ("global_array", global_s)):
                tokens = global_batch_size / sec
                result[name] = {"seconds_per_batch": sec, "tokens_per_s": tokens,
                                "store_GB_per_s": tokens * bytes_per_row / 1e9}
            out["loader"][dtype] = result
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if train_step:
        out["train_step"] = _train_step_seconds(global_batch_size, d_in, train_steps, train_arch,
                                                train_features, train_k)
        if out["train_step"]["available"]:
            step_tps = out["train_step"]["tokens_per_s"]
            out["ratio"] = {d: r["global_array"]["tokens_per_s"] / step_tps
                            for d, r in out["loader"].items()}
    return out


def _format(result: dict[str, Any]) -> str:
    c = result["config"]
    lines = [f"loader throughput, d_in={c['d_in']}, batch {c['global_batch_size']}, "
             f"{c['rows']:,}-row store, slab {c['slab_rows']}, window {c['shuffle_buffer_rows']}, "
             f"{c['read_threads']} read threads, {c['cpus']} CPUs, jax {c['jax']}"]
    for dtype, r in result["loader"].items():
        for name in ("local_numpy", "global_array"):
            m = r[name]
            lines.append(f"  {dtype:9s} {name:12s} {m['tokens_per_s']:>12,.0f} tokens/s  "
                         f"{m['store_GB_per_s']:6.3f} GB/s (stored bytes)")
        lines.append(f"  {dtype:9s} {'store write':12s} {r['write_tokens_per_s']:>12,.0f} tokens/s")
    step = result.get("train_step")
    if step is not None:
        if step["available"]:
            lines.append(f"  train step ({step['arch']}, F={step['n_features']}, k={step['k']}): "
                         f"{step['tokens_per_s']:,.0f} tokens/s")
            for dtype, ratio in result["ratio"].items():
                lines.append(f"  loader/step ratio ({dtype}): {ratio:.1f}x")
        else:
            lines.append(f"  train step unavailable: {step['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=131072)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--batches", type=int, default=160)
    p.add_argument("--read-threads", type=int, default=2)
    p.add_argument("--no-train-step", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = measure_loader_throughput(rows=args.rows, global_batch_size=args.batch,
                                       batches=args.batches, read_threads=args.read_threads,
                                       train_step=not args.no_train_step)
    print(json.dumps(result, indent=1) if args.json else _format(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
