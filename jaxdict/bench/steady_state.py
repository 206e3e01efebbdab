"""The step a training run actually takes: with dead latents (AuxK on), under a sweep axis, and with
or without fetching its metrics — timed side by side in one process, variants alternating.

A fresh SAE has no dead latents, so its first steps skip AuxK (DESIGN.md §4, "Benchmark the steady
state"). Here a fixed share of latents is made dead and kept dead: their tokens-since-fired
counters start past the dead window and their encoder bias at -1e4, so they never win a top-k and
AuxK picks among them on every timed step (its cost does not depend on their values).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdict.sae.config import SAEConfig
from jaxdict.train.mesh import make_mesh
from jaxdict.train.optim import OptimConfig
from jaxdict.train.state import add_leading_axis, create_state, state_specs, to_shardings
from jaxdict.train.step import TrainStep

_OPTIM = OptimConfig(lr=1e-4, total_steps=10_000)


def dead_ids(n_features: int, dead_frac: float) -> np.ndarray:
    """Evenly spread ids (every shard of a feature-sharded SAE gets its share)."""
    n_dead = int(round(dead_frac * n_features))
    return np.linspace(0, n_features - 1, n_dead).round().astype(np.int32) if n_dead else np.zeros(0, np.int32)


def with_dead_latents(state, cfg: SAEConfig, ids: np.ndarray):
    if len(ids) == 0:
        return state
    ids = jnp.asarray(ids)
    b_enc = state.params.b_enc.at[ids].set(-1e4)
    since = state.tokens_since_fired.at[ids].set(cfg.dead_tokens)
    return state.replace(params=state.params.replace(b_enc=b_enc), tokens_since_fired=since)


@dataclasses.dataclass
class Variant:
    """One compiled step and the state it advances."""

    name: str
    step: TrainStep
    state: Any
    batch: jax.Array
    fetch_metrics: bool = False
    times: list = dataclasses.field(default_factory=list)

    def __call__(self) -> None:
        start = time.perf_counter()
        self.state, metrics = self.step(self.state, self.batch)
        if self.fetch_metrics:
            jax.device_get(metrics)
        jax.block_until_ready(self.state)
        self.times.append(time.perf_counter() - start)


def make_variant(name: str, cfg: SAEConfig, batch_size: int, mesh_shape: tuple[int, int],
                 dead_frac: float = 0.0, sweep: int | None = None, dead_members: int = 1,
                 fetch_metrics: bool = False, metrics: bool = True, seed: int = 0) -> Variant:
    """A step of `cfg` whose state has `dead_frac` of its latents dead; under `sweep`, in the first
    `dead_members` members only. `metrics=False` compiles the step without its metrics."""
    n_devices = mesh_shape[0] * mesh_shape[1]
    mesh = make_mesh(*mesh_shape, devices=jax.devices()[:n_devices])
    ids = dead_ids(cfg.n_features, dead_frac)
    states = []
    for member in range(sweep or 1):
        state, shardings = create_state(cfg, _OPTIM, mesh, seed=seed + member)
        states.append(with_dead_latents(state, cfg, ids if member < dead_members else ids[:0]))
    if sweep:
        shardings = to_shardings(mesh, add_leading_axis(state_specs(cfg, _OPTIM, jax.eval_shape(lambda: states[0]))))
        state = jax.jit(lambda *s: jax.tree.map(lambda *x: jnp.stack(x), *s), out_shardings=shardings)(*states)
    else:
        state = jax.device_put(states[0], shardings)
    step = TrainStep(cfg, _OPTIM, mesh, shardings, batch_size, sweep_size=sweep, metrics=metrics)
    batch = np.random.default_rng(seed).standard_normal((batch_size, cfg.d_in), dtype=np.float32)
    return Variant(name, step, state, jax.device_put(batch, step.batch_sharding), fetch_metrics)


def alternate(variants: list[Variant], rounds: int, warmup: int = 2, log: Callable[[str], None] = print) -> list[dict]:
    """Call the variants round-robin (`warmup` untimed rounds first): each round sees the same load."""
    for v in variants:
        t0 = time.perf_counter()
        v()
        log(f"  {v.name}: first call (compile) {time.perf_counter() - t0:.1f} s")
    for _ in range(max(warmup - 1, 0)):
        for v in variants:
            v()
    for v in variants:
        v.times.clear()
    for _ in range(rounds):
        for v in variants:
            v()
    rows = []
    for v in variants:
        t = np.asarray(v.times)
        rows.append({"variant": v.name, "step_s_median": float(np.median(t)), "step_s_min": float(t.min()),
                     "step_s_max": float(t.max()), "tokens_per_s": v.step.batch_size / float(np.median(t))})
    return rows


def ratio_ranges(variants: list[Variant], num: str, den: str) -> dict[str, float]:
    """Per-round ratio num/den (same round, same load): median and range."""
    by = {v.name: np.asarray(v.times) for v in variants}
    r = by[num] / by[den]
    return {"ratio": f"{num} / {den}", "median": float(np.median(r)), "min": float(r.min()), "max": float(r.max())}


def run_steady_suite(d_in: int = 640, n_features: int = 16384, batch_size: int = 4096, k: int = 64,
                     dead_frac: float = 0.05, rounds: int = 7, meshes=((1, 1), (2, 4)), sweep: int = 4,
                     compute_dtype: str = "float32", decode: str = "sparse",
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """TopK at one shape (`decode` and the matmuls' `compute_dtype` as SAEConfig's): per mesh, the
    fresh step, the step with `dead_frac` dead (AuxK on) and the same dead set with aux_coeff = 0;
    on the first mesh also a step whose metrics are fetched to the host (a logged step) and one
    compiled without metrics; then a sweep axis of `sweep` runs with nothing dead, with one member
    at `dead_frac` dead, and without AuxK."""
    cfg = SAEConfig(arch="topk", d_in=d_in, n_features=n_features, k=k, decode=decode, compute_dtype=compute_dtype)
    no_aux = dataclasses.replace(cfg, aux_coeff=0.0)
    groups = []
    for i, mesh in enumerate(meshes):
        m = f"{mesh[0]}x{mesh[1]}"
        specs = [(f"{m} fresh", cfg, mesh, 0.0, {}), (f"{m} dead AuxK", cfg, mesh, dead_frac, {}),
                 (f"{m} dead no-AuxK", no_aux, mesh, dead_frac, {})]
        ratios = [(f"{m} dead AuxK", f"{m} dead no-AuxK"), (f"{m} dead AuxK", f"{m} fresh")]
        if i == 0:
            specs += [(f"{m} dead AuxK logged", cfg, mesh, dead_frac, {"fetch_metrics": True}),
                      (f"{m} dead AuxK no metrics", cfg, mesh, dead_frac, {"metrics": False})]
            ratios += [(f"{m} dead AuxK logged", f"{m} dead AuxK"), (f"{m} dead AuxK", f"{m} dead AuxK no metrics")]
        groups.append((specs, ratios))
    if sweep:
        mesh = meshes[0]
        s = f"sweep{sweep}"
        specs = [(f"{s} none dead", cfg, mesh, dead_frac, {"sweep": sweep, "dead_members": 0}),
                 (f"{s} one dead AuxK", cfg, mesh, dead_frac, {"sweep": sweep}),
                 (f"{s} one dead no-AuxK", no_aux, mesh, dead_frac, {"sweep": sweep})]
        groups.append((specs, [(f"{s} none dead", f"{s} one dead no-AuxK"),
                                  (f"{s} one dead AuxK", f"{s} one dead no-AuxK")]))
    result = {"shape": {"d_in": d_in, "n_features": n_features, "batch_size": batch_size, "k": k,
                        "dead_frac": dead_frac, "rounds": rounds, "decode": decode, "compute_dtype": compute_dtype},
              "steps": [], "ratios": [], "jax": jax.__version__, "device": jax.devices()[0].device_kind}
    for specs, ratios in groups:
        variants = [make_variant(name, c, batch_size, mesh, frac, **kw) for name, c, mesh, frac, kw in specs]
        log(f"alternating {', '.join(v.name for v in variants)}")
        rows = alternate(variants, rounds, log=log)
        for row in rows:
            log(f"  {row['variant']:28s} {row['tokens_per_s']:8.0f} tok/s  median {1000 * row['step_s_median']:.0f} ms "
                f"({1000 * row['step_s_min']:.0f}-{1000 * row['step_s_max']:.0f})")
        for num, den in ratios:
            r = ratio_ranges(variants, num, den)
            log(f"  {r['ratio']}: {r['median']:.3f} (per-round range {r['min']:.3f}-{r['max']:.3f})")
            result["ratios"].append(r)
        result["steps"] += rows
        del variants  # free the states before the next group
    return result
