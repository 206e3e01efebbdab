"""Harvester throughput: tokens/s and achieved FLOP/s against this machine's fp32 matmul peak.

Both are measured in the same run (the machines are shared and noisy, so a ratio is only meaningful
side by side). FLOPs count the matmuls of the blocks the harvest runs (the forward pass stops at
the deepest hook), at 2 FLOPs per multiply-add:
  per position and block: 2*d*(H + 2K)*hd (q, k, v) + 2*H*hd*d (o) + 6*d*F (gate, up, down)
                          + 4*H*hd*C (scores and weighted values over the C keys of the window).
`executed` counts every position of every window (padding included: the device computes it);
`useful` counts the real tokens only.
"""
from __future__ import annotations

import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp

from jaxdict.lm.config import Gemma3Config


def forward_flops_per_position(config: Gemma3Config, n_blocks: int, context: int) -> float:
    c = config
    proj = 2 * c.d_model * (c.n_heads + 2 * c.n_kv_heads) * c.head_dim
    out = 2 * c.n_heads * c.head_dim * c.d_model
    ffn = 6 * c.d_model * c.ffn_dim
    attn = 4 * c.n_heads * c.head_dim * context
    return float(n_blocks * (proj + out + ffn + attn))


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """Best-of-`repeats` FLOP/s of an n x n x n float32 matmul on the default device."""
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), jnp.float32)
    b = jax.random.normal(key_b, (n, n), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y)
    mm(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        mm(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best


def bench_harvest(model: str = "gemma3-270m", hook: str = "resid_post.9", context: int = 128,
                  batch_size: int = 32, tokens: int = 20_000, corpus: str = "default",
                  matmul_n: int = 2048) -> dict[str, Any]:
    """Harvest `tokens` tokens at `hook` into a temporary store and measure the matmul peak.

    Returns tokens/s, useful and executed FLOP/s, the peak and the fractions of it. A first small
    harvest warms up compilation so that the timed run measures steady state.
    """
    import jaxdict.lm
    from jaxdict.corpus import open_corpus
    from jaxdict.harvest import HarvestConfig, harvest

    lm = jaxdict.lm.load(model)
    n_blocks = jaxdict.lm.parse_hook(hook, lm.config.n_layers) + 1
    per_position = forward_flops_per_position(lm.config, n_blocks, context)
    with tempfile.TemporaryDirectory() as tmp:
        warm = HarvestConfig(hooks=(hook,), context=context, batch_size=batch_size,
                             max_tokens=batch_size * (context - 1))
        harvest(lm, open_corpus(corpus), f"{tmp}/warm", warm, progress=False)
        config = HarvestConfig(hooks=(hook,), context=context, batch_size=batch_size,
                               max_tokens=tokens)
        summary = harvest(lm, open_corpus(corpus), f"{tmp}/timed", config, progress=False)
    peak = matmul_peak_flops(matmul_n)
    seconds = summary["seconds"]
    real = summary["tokens"]
    slots = real / (1.0 - summary["padding_frac"]) if summary["padding_frac"] < 1 else 0.0
    useful = per_position * real / seconds
    executed = per_position * slots / seconds
    return {
        "model": model, "hook": hook, "context": context, "batch_size": summary["batch_size"],
        "devices": summary["devices"], "device_kind": jax.devices()[0].device_kind,
        "tokens": real, "seconds": seconds, "tokens_per_s": real / seconds,
        "padding_frac": summary["padding_frac"],
        "flops_per_position": per_position,
        "useful_flops_per_s": useful, "executed_flops_per_s": executed,
        "matmul_peak_flops_per_s": peak, "matmul_n": matmul_n,
        "useful_frac_of_peak": useful / peak, "executed_frac_of_peak": executed / peak,
    }


if __name__ == "__main__":
    import json
    import sys

    kwargs = {k: (int(v) if v.isdigit() else v) for k, v in (a.split("=", 1) for a in sys.argv[1:])}
    print(json.dumps(bench_harvest(**kwargs), indent=1))
