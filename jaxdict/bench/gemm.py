"""The machine's GEMM limit beside XLA's own, at the SAE step's matmul shapes (issue 18, item 5).

An SAE step is three to five GEMMs of shape [B, d] x [d, F] and its transposes, so their rate is the
ceiling of the step. On a CPU that ceiling depends on more than the cores: which BLAS runs the dot
(XLA:CPU's Eigen/oneDNN kernels, numpy's OpenBLAS, torch's MKL/oneDNN), and whether the [B, F]
output lands in fresh memory. A fresh 256 MiB buffer from glibc malloc is a new mmap, so every
page is faulted in on first write; a reused buffer (an `out=` argument, a donated input, or an
allocator that keeps freed memory, such as tcmalloc) is not. Each candidate is timed in alternating
rounds in one process, so ratios are side by side on a shared machine.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import statistics
import time
from typing import Any, Callable

import numpy as np

# Instruction-set extensions that decide which GEMM kernels a CPU can run (AVX-512 and its bf16
# dot product, AMX tiles on Sapphire Rapids and later).
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16")


def machine_info(cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
    """CPU model, instruction sets, cores, allocator and library versions: what a CPU number needs beside it."""
    import jax
    import jaxlib

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open(cpuinfo) as f:
            fields = dict(line.partition(":")[::2] for line in f.read().split("\n\n")[0].splitlines())
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        model, flags = fields.get("model name", model), set(fields.get("flags", "").split())
    except OSError:  # not Linux: the platform's processor name, no flags
        pass
    thp = None
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = f.read().strip()
    except OSError:
        pass
    info = {"cpu": model, "isa": [f for f in _ISA_FLAGS if f in flags], "logical_cpus": os.cpu_count(),
            "allocator": os.environ.get("LD_PRELOAD") or "glibc malloc", "transparent_hugepage": thp,
            "jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": np.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}
    if importlib.util.find_spec("torch") is not None:
        import torch

        info["torch"] = torch.__version__
    return info


def _xla_candidates(a: np.ndarray, w: np.ndarray) -> dict[str, Callable[[], Any]]:
    import jax
    import jax.numpy as jnp

    dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    # The output overwrites a donated buffer of its own shape: XLA aliases it, so no fresh memory.
    dot_into = jax.jit(lambda x, y, out: out * 0.0 + jnp.dot(x, y, preferred_element_type=jnp.float32),
                       donate_argnums=2)
    x32, w32 = jnp.asarray(a), jnp.asarray(w)
    x16, w16 = x32.astype(jnp.bfloat16), w32.astype(jnp.bfloat16)
    holder = {"out": jnp.zeros((a.shape[0], w.shape[1]), jnp.float32)}

    def donated():
        holder["out"] = dot_into(x32, w32, holder["out"])
        return holder["out"]

    return {"xla fp32": lambda: dot(x32, w32), "xla fp32 donated output": donated,
            "xla bf16": lambda: dot(x16, w16)}


def has_native_bf16(isa: list[str]) -> bool:
    """Whether the CPU multiplies bf16 in hardware; elsewhere torch emulates it at ~0.3 GFLOP/s
    (measured on an AVX2 EPYC), which is not worth timing."""
    return "avx512_bf16" in isa or "amx_bf16" in isa


def _host_candidates(a: np.ndarray, w: np.ndarray, bf16: bool) -> dict[str, Callable[[], Any]]:
    out = np.empty((a.shape[0], w.shape[1]), np.float32)
    out.fill(0.0)  # touch every page once, so the reused buffer is resident
    cands = {"numpy fp32": lambda: a @ w, "numpy fp32 out=": lambda: np.matmul(a, w, out=out)}
    if importlib.util.find_spec("torch") is not None:
        import torch

        ta, tw, tout = torch.from_numpy(a), torch.from_numpy(w), torch.from_numpy(out)
        ta16, tw16 = ta.bfloat16(), tw.bfloat16()
        cands.update({"torch fp32": lambda: ta @ tw, "torch fp32 out=": lambda: torch.matmul(ta, tw, out=tout)})
        if bf16:
            cands["torch bf16"] = lambda: ta16 @ tw16
    return cands


def _block(result: Any) -> None:
    if hasattr(result, "block_until_ready"):
        result.block_until_ready()


def gemm_shapes(batch_size: int, d_in: int, n_features: int, square: int) -> dict[str, tuple[int, int, int]]:
    """(m, k, n) of the step's encoder GEMM, its decoder GEMM and a square reference."""
    return {"encoder [B,d]x[d,F]": (batch_size, d_in, n_features),
            "decoder [B,F]x[F,d]": (batch_size, n_features, d_in),
            "square": (square, square, square)}


def run_gemm_suite(batch_size: int = 4096, d_in: int = 640, n_features: int = 16384, rounds: int = 5,
                   square: int = 2048, log: Callable[[str], None] = print) -> dict[str, Any]:
    """GFLOP/s of every candidate at every shape: median and range over `rounds` alternating rounds."""
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {"machine": machine_info(), "rounds": rounds, "shapes": {}}
    log(f"machine: {result['machine']['cpu']} ({' '.join(result['machine']['isa'])}), "
        f"{result['machine']['logical_cpus']} logical CPUs, allocator {result['machine']['allocator']}")
    for name, (m, k, n) in gemm_shapes(batch_size, d_in, n_features, square).items():
        # Random operands: constant data can run faster than real data (.library/device/METHOD.md).
        a = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32)
        cands = {**_xla_candidates(a, w), **_host_candidates(a, w, has_native_bf16(result["machine"]["isa"]))}
        for fn in cands.values():  # compile and warm up
            _block(fn())
        times: dict[str, list[float]] = {c: [] for c in cands}
        for _ in range(rounds):
            for cand, fn in cands.items():
                start = time.perf_counter()
                _block(fn())
                times[cand].append(time.perf_counter() - start)
        flops = 2.0 * m * k * n
        rows = {c: {"gflops_median": flops / statistics.median(t) / 1e9, "gflops_best": flops / min(t) / 1e9,
                    "gflops_worst": flops / max(t) / 1e9} for c, t in times.items()}
        result["shapes"][name] = {"m": m, "k": k, "n": n, "candidates": rows}
        log(f"\n{name} (m={m} k={k} n={n}), GFLOP/s median [worst, best] of {rounds} rounds:")
        for cand, row in rows.items():
            log(f"  {cand:26s} {row['gflops_median']:7.1f}  [{row['gflops_worst']:.1f}, {row['gflops_best']:.1f}]")
    return result
