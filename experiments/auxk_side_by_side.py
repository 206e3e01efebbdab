"""Two versions of AuxK (jaxdict/sae/auxk.py) side by side in one process, beside the same step
without AuxK: the `bench steady` shape (d 640, F 16,384, B 4,096, sparse TopK, 5 % dead), variants
alternating round by round so that each round sees the same load. The older version is a copy of
auxk.py from git, loaded as a second module and patched into sae/losses.py while its step traces.

    git show 27b29f5:jaxdict/sae/auxk.py > /tmp/auxk_before.py
    XLA_FLAGS=--xla_force_host_platform_device_count=8 nice -n 5 python experiments/auxk_side_by_side.py \\
        --before /tmp/auxk_before.py --mesh 1x1,2x4 --rounds 7 --fresh

An older auxk.py with `add_aux_k_gradient` runs as it is; one without it has its AuxK differentiated
through the buffer switch. `--sweep 4` times sweeps of 4 runs instead (the first member dead in the
dead variants; nothing dead in `--fresh` ones).

`--through-switch` adds the current AuxK with its gradient taken through the buffer switch (what the
train step did before auxk.add_aux_k_gradient), with and without dead latents.
`--extra-size 832` adds a variant of the current version whose buffer sizes include 832 (what a
buffer sized closer to the 819 dead latents would cost; the default sizes are powers of two).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdict.bench.steady_state import make_variant, ratio_ranges
from jaxdict.sae import auxk as auxk_now
from jaxdict.sae import losses
from jaxdict.sae.config import SAEConfig


def load_copy(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_extra_size(size: int):
    module = load_copy(auxk_now.__file__, "auxk_extra")
    sizes = module.dead_buffer_sizes
    module.dead_buffer_sizes = lambda cfg, mesh=None: tuple(sorted(set(sizes(cfg, mesh)) | {size}))
    return module


def without_switch(size: int):
    """The current version with one buffer of `size` slots run directly, not through lax.switch
    (assumes something is dead): what the switch costs under autodiff."""
    module = load_copy(auxk_now.__file__, "auxk_no_switch")
    module.dead_buffer_sizes = lambda cfg, mesh=None: (size,)

    class DirectSwitch:
        def __getattr__(self, name):
            return getattr(jax.lax, name)

        @staticmethod
        def switch(index, branches, operand):
            return branches[-1](operand)

    module.lax = DirectSwitch()
    return module


def through_switch(module=None):
    """`module`'s AuxK (default: the current one) with its gradient taken by differentiating
    through the buffer switch, as the train step did before auxk.add_aux_k_gradient; also lets an
    older auxk.py without add_aux_k_gradient run in today's step."""
    module = module or load_copy(auxk_now.__file__, "auxk_through_switch")

    def add_aux_k_gradient(grads, params, x, residual, dead, step, aux_demand, cfg, mesh, pre_acts, weight):
        def weighted(p):
            loss, counts = module.aux_k_loss(p, x, residual, dead, step, aux_demand, cfg, mesh, pre_acts=pre_acts)
            return weight * loss, (loss, counts)

        (_, (loss, counts)), aux_grads = jax.value_and_grad(weighted, has_aux=True)(params)
        return jax.tree.map(lambda a, b: a + b, grads, aux_grads), loss, counts

    module.add_aux_k_gradient = add_aux_k_gradient
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", help="path of the older auxk.py (omit: only the current version)")
    ap.add_argument("--mesh", default="1x1", help="comma-separated DATAxMODEL meshes")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--dead-frac", type=float, default=0.05)
    ap.add_argument("--fresh", action="store_true", help="also the current version with nothing dead")
    ap.add_argument("--extra-size", type=int, default=0)
    ap.add_argument("--sweep", type=int, default=0,
                    help="time sweeps of this many runs (vmap), the first member dead, the others fresh")
    ap.add_argument("--through-switch", action="store_true",
                    help="also the current AuxK differentiated through its buffer switch (the step before 2026-11-30's change)")
    ap.add_argument("--no-switch", type=int, default=0,
                    help="also the current version with one buffer of this many slots and no lax.switch")
    args = ap.parse_args()
    cfg = SAEConfig(arch="topk", d_in=640, n_features=16384, k=args.k, decode="sparse")
    specs = [("no-AuxK", dataclasses.replace(cfg, aux_coeff=0.0), args.dead_frac, auxk_now)]
    if args.before:
        before = load_copy(args.before, "auxk_before")
        if not hasattr(before, "buffer_demand"):  # before per-shard slots: sized by the dead count
            before.buffer_demand = lambda dead, mesh: jnp.max(jnp.sum(dead, axis=-1, dtype=jnp.int32))
        if not hasattr(before, "add_aux_k_gradient"):
            before = through_switch(before)
        specs.append(("AuxK before", cfg, args.dead_frac, before))
        if args.fresh:
            specs.append(("fresh before", cfg, 0.0, before))
    specs.append(("AuxK after", cfg, args.dead_frac, auxk_now))
    if args.fresh:
        specs.append(("fresh after", cfg, 0.0, auxk_now))
    if args.extra_size:
        specs.append((f"AuxK after C{args.extra_size}", cfg, args.dead_frac, with_extra_size(args.extra_size)))
    if args.through_switch:
        specs.append(("AuxK through switch", cfg, args.dead_frac, through_switch()))
        specs.append(("fresh through switch", cfg, 0.0, through_switch()))
    if args.no_switch:
        specs.append((f"AuxK after C{args.no_switch} no switch", cfg, args.dead_frac, without_switch(args.no_switch)))
    names = [s[0] for s in specs]
    pairs = [(n, "no-AuxK") for n in names[1:]] + [(n, "AuxK after") for n in names if n.startswith("AuxK after C")]
    if args.through_switch:
        pairs.append(("AuxK after", "AuxK through switch"))
    if args.before:
        pairs.append(("AuxK after", "AuxK before"))
        if args.fresh:
            pairs.append(("fresh after", "fresh before"))
    result = {"jax": jax.__version__, "k": args.k, "dead_frac": args.dead_frac, "rounds": args.rounds,
              "ratios": [], "steps": []}
    for m in args.mesh.split(","):
        mesh = tuple(int(a) for a in m.split("x"))
        variants = []
        for name, c, frac, module in specs:
            kw = {"sweep": args.sweep, "dead_members": 1} if args.sweep else {}
            v = make_variant(f"{m} {name}", c, 4096, mesh, frac, **kw)
            losses.auxk = module  # the step traces at its first call
            t0 = time.perf_counter()
            v()
            losses.auxk = auxk_now
            print(f"{v.name}: compile and first step {time.perf_counter() - t0:.1f} s", flush=True)
            variants.append(v)
        for v in variants:  # one untimed round
            v()
            v.times.clear()
        for _ in range(args.rounds):
            for v in variants:
                v()
            print("  round: " + ", ".join(f"{v.name} {1000 * v.times[-1]:.0f} ms" for v in variants), flush=True)
        for v in variants:
            t = np.asarray(v.times)
            result["steps"].append({"variant": v.name, "median_ms": 1000 * float(np.median(t)),
                                    "min_ms": 1000 * float(t.min()), "max_ms": 1000 * float(t.max())})
            print(f"  {v.name:26s} median {1000 * np.median(t):.0f} ms ({1000 * t.min():.0f}-{1000 * t.max():.0f})")
        for a, b in pairs:
            r = ratio_ranges(variants, f"{m} {a}", f"{m} {b}")
            result["ratios"].append(r)
            print(f"  {r['ratio']}: {r['median']:.3f} (per-round {r['min']:.3f}-{r['max']:.3f})", flush=True)
        del variants
    print(json.dumps(result))


if __name__ == "__main__":
    main()
