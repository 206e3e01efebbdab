"""Where BatchTopK's early batch-fvu spikes come from: train as `jaxdict train` does and, before each
step, take the batch apart row by row.

    python experiments/batchtopk_spike.py --config experiments/quality.py:gemma \
        --set data.store=/work/stores/gemma-l9/resid_post.9 --set sae.arch=batchtopk --steps 40

Prints per step: the batch fvu, the densest row's winner count, that row's ‖x − μ‖² relative to the
batch median, and the share of the batch's squared error that row carries.

    python experiments/batchtopk_spike.py --probe RUN --store STORE

instead puts one outlier row (‖x − μ‖² > 100× the median) into a batch of 1023 ordinary rows and
reports BatchTopK and TopK on it, with RUN's trained parameters and at initialisation.
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxdict.config import apply_overrides
from jaxdict.data import ActivationLoader
from jaxdict.sae.forward import forward
from jaxdict.train.config import load_run_configs
from jaxdict.train.mesh import make_mesh
from jaxdict.train.run_setup import derive_from_data, open_sources
from jaxdict.train.state import create_state
from jaxdict.train.step import TrainStep


def row_report(params, batch, scale, cfg) -> dict:
    x = jnp.asarray(batch, jnp.float32) * scale
    out = forward(params, x, cfg, None, train=True)
    xn, x_hat = np.asarray(x, np.float64), np.asarray(out.x_hat, np.float64)
    dev = np.sum(np.square(xn - xn.mean(axis=0)), axis=1)
    err = np.sum(np.square(xn - x_hat), axis=1)
    l0 = np.asarray(out.l0)
    worst = int(np.argmax(err))
    return {"fvu": err.sum() / dev.sum(), "max_row_l0": int(l0.max()), "worst_row_l0": int(l0[worst]),
            "worst_row_dev_over_median": float(dev[worst] / np.median(dev)),
            "worst_row_err_share": float(err[worst] / err.sum()),
            "worst_row_err_over_dev": float(err[worst] / dev[worst])}


def probe(run: str, store_path: str, rows: int = 65536, trials: int = 2) -> None:
    import dataclasses

    from jaxdict.sae.io import load_sae
    from jaxdict.sae.params import init_params
    from jaxdict.store import open_store

    sae = load_sae(run)  # parameters in raw activation units
    store = open_store(store_path)
    x = np.asarray(store.read(0, min(rows, store.n_rows)), np.float32)
    mu = np.asarray(store.stats["mean"], np.float64)
    scale = float(np.sqrt(store.d_in / float(store.stats["mean_sq_norm"])))
    dev = np.sum(np.square(x - mu), axis=1)
    ordinary, outliers = np.where(dev < 10 * np.median(dev))[0], np.where(dev > 100 * np.median(dev))[0]
    print(f"{len(outliers)} of {len(x)} rows have ‖x − μ‖² > 100× the median")
    init = init_params(dataclasses.replace(sae.cfg, arch="batchtopk"), jax.random.PRNGKey(0))
    init = init.replace(b_dec=jnp.asarray(mu * scale, jnp.float32))
    rng = np.random.default_rng(0)
    for label, params, unit in (("trained", sae.params, 1.0), ("initialisation", init, scale)):
        for t in range(min(trials, len(outliers))):
            plain = x[rng.choice(ordinary, 1024, replace=False)]
            spiked = plain.copy()
            spiked[-1] = x[outliers[t]]
            for arch in ("batchtopk", "topk"):
                cfg = dataclasses.replace(sae.cfg, arch=arch, decode="dense")
                a, b = (row_report(params, batch, unit, cfg) for batch in (plain, spiked))
                print(f"{label:14s} {arch:9s} fvu {a['fvu']:.3f} -> {b['fvu']:.3f} with the outlier row, which takes "
                      f"{b['worst_row_l0'] if b['worst_row_dev_over_median'] > 100 else '?'} latents, "
                      f"err/dev {b['worst_row_err_over_dev']:.2f}, {b['worst_row_err_share']:.0%} of the batch's error")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config")
    p.add_argument("--probe", metavar="RUN", help="probe a trained BatchTopK run with outlier rows")
    p.add_argument("--store", help="store for --probe")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args(argv)
    if args.probe:
        probe(args.probe, args.store)
        return 0
    cfg = apply_overrides(load_run_configs(args.config)[0], args.set)
    sources = open_sources(cfg)
    cfg = derive_from_data([cfg], sources)[0]
    mesh = make_mesh(1, 1, devices=jax.devices()[:1])
    state, shardings = create_state(cfg.sae, cfg.optim, mesh, seed=cfg.run.seed, input_scale=sources.input_scale,
                                    hparams={"lr": cfg.optim.lr, "sparsity_coeff": cfg.sparsity_coeff})
    b_dec = np.asarray(sources.data_mean(cfg.data.scale_rows) * sources.input_scale, np.float32)
    state = state.replace(params=state.params.replace(b_dec=jnp.asarray(b_dec)))
    step = TrainStep(cfg.sae, cfg.optim, mesh, shardings, cfg.data.batch_size)
    loader = iter(ActivationLoader(sources.train, cfg.data.batch_size, mesh, seed=cfg.data.seed,
                                   slab_rows=min(cfg.data.slab_rows, sources.train.n_rows),
                                   shuffle_buffer_rows=cfg.data.shuffle_buffer_rows))
    print("step fvu max_row_l0 worst_row_l0 worst_dev/median worst_err_share worst_err/dev")
    for i in range(1, args.steps + 1):
        batch = np.asarray(next(loader))
        r = row_report(state.params, batch, sources.input_scale, cfg.sae)
        state, metrics = step(state, jnp.asarray(batch))
        print(f"{i} {r['fvu']:.3f} {r['max_row_l0']} {r['worst_row_l0']} {r['worst_row_dev_over_median']:.0f} "
              f"{r['worst_row_err_share']:.3f} {r['worst_row_err_over_dev']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
