"""Why AuxK does (not) revive dead latents: a short TopK run on real activations that logs, for the
latents that are dead at each logged step, what AuxK does to them.

    python -m jaxdict.bench.auxk_revival --store STORE --features 16384 --k 32 --batch-size 1024 \\
        --steps 600 --dead-steps 50 --set aux_relu=false --json out.json

Logged per step: dead count; `aux_grad_latents` (dead latents with a nonzero AuxK gradient); the
share of dead latents whose largest pre-activation on the batch is > 0 (what a ReLU on AuxK's
picks lets through); aux_loss; and Adam's normalised step |m̂| / (√v̂ + ε) on b_enc, averaged over
the dead latents and over the live ones — with the main loss's second-moment history still in v,
a dead latent's AuxK gradient moves it by a fraction of the learning rate only.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp


def adam_step_size(state, field: str = "b_enc") -> jax.Array:
    """Per-latent |m̂| / (√v̂ + ε) of Adam for one [F] parameter (chain(clip, adam) or adam)."""
    adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda s: hasattr(s, "nu")) if hasattr(s, "nu")][0]
    count = adam.count.astype(jnp.float32)
    m_hat = getattr(adam.mu, field) / (1 - 0.9 ** count)
    v_hat = getattr(adam.nu, field) / (1 - 0.999 ** count)
    return jnp.abs(m_hat) / (jnp.sqrt(v_hat) + 1e-8)


def run(args) -> list[dict]:
    from jaxdict.data import ActivationLoader
    from jaxdict.sae.config import SAEConfig
    from jaxdict.sae.forward import pre_activations
    from jaxdict.train.mesh import make_mesh
    from jaxdict.train.optim import OptimConfig
    from jaxdict.train.state import create_state
    from jaxdict.train.step import TrainStep
    from jaxdict.train.config import DataConfig, RunConfig
    from jaxdict.train.run_setup import open_sources

    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = value == "true" if value in ("true", "false") else json.loads(value)
    cfg = SAEConfig(arch="topk", d_in=640, n_features=args.features, k=args.k,
                    dead_tokens=args.dead_steps * args.batch_size, **overrides)
    optim = OptimConfig(lr=args.lr, total_steps=args.steps)
    sources = open_sources(RunConfig(sae=cfg, optim=optim, data=DataConfig(source="store", store=args.store)))
    scale = sources.input_scale
    mesh = make_mesh(1, 1, devices=jax.devices()[:1])
    state, shardings = create_state(cfg, optim, mesh, seed=0, input_scale=scale)
    # As `jaxdict train` does (run.init_b_dec = "mean").
    b_dec = jnp.asarray(sources.data_mean(65536) * scale, jnp.float32)
    state = state.replace(params=state.params.replace(b_dec=b_dec))
    step = TrainStep(cfg, optim, mesh, shardings, args.batch_size)
    loader = iter(ActivationLoader(sources.train, args.batch_size, mesh, seed=0, slab_rows=4096, shuffle_buffer_rows=32768))
    records, t0 = [], time.time()
    for i in range(1, args.steps + 1):
        batch = next(loader)
        state, metrics = step(state, batch)
        if i % args.log_every and i != args.steps:
            continue
        dead = state.tokens_since_fired >= cfg.dead_tokens
        z_max = jnp.max(pre_activations(state.params, batch.astype(jnp.float32) * scale, cfg), axis=0)
        adam = adam_step_size(state)
        n_dead = int(jnp.sum(dead))
        rec = {k: float(v) for k, v in jax.device_get(metrics).items()
               if k in ("fvu", "l0", "dead_frac", "aux_loss", "mse", "aux_dead_latents", "aux_grad_latents")}
        rec.update(step=i, wall_s=time.time() - t0, n_dead=n_dead,
                   dead_with_positive_preact=float(jnp.sum(dead & (z_max > 0))) / max(n_dead, 1),
                   adam_step_dead=float(jnp.sum(jnp.where(dead, adam, 0))) / max(n_dead, 1),
                   adam_step_live=float(jnp.sum(jnp.where(dead, 0, adam))) / max(cfg.n_features - n_dead, 1))
        print(json.dumps(rec), flush=True)
        records.append(rec)
    return records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True)
    p.add_argument("--features", type=int, default=16384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--dead-steps", type=int, default=50, help="dead window in steps (tokens = steps · batch)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--set", action="append", default=[], help="SAEConfig override, e.g. aux_relu=false")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    records = run(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
