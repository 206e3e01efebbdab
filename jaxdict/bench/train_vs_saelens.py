"""Whole training runs side by side: SAELens's `SAETrainer.fit` (its TopK SAE and AuxK) and
`jaxdict train`, on the same store rows in the same order, scored by one held-out function.

Both train a TopK SAE of F latents at k on B-token batches for the same steps, with Adam at the same
lr decayed linearly to 0 over the last 20 % of steps, the same dead window (in steps of B tokens),
inputs scaled by the same constant (E‖x‖² = d_in) and the decoder bias started at the data mean.
SAELens reads the batches that jaxdict's loader yields (same seed, same shuffle), converted to torch.
Each side's wall time is the whole call: set-up, compilation, training, and (jaxdict) its final
checkpoint and held-out pass. Scoring (`score_topk`) runs afterwards on raw-unit parameters of both.
Imported lazily by `jaxdict bench train`; torch and sae-lens are optional extras.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdict.sae.params import SAEParams, fold_input_scale


@dataclasses.dataclass(frozen=True)
class WholeRun:
    store: str
    n_features: int = 4096
    k: int = 32
    batch_size: int = 1024
    steps: int = 1000
    lr: float = 5e-4
    dead_steps: int = 100
    eval_rows: int = 32768
    out_dir: str = "runs/bench/train_vs_saelens"


def score_topk(params: SAEParams, k: int, batches) -> dict[str, float]:
    """Held-out fvu (μ over the whole set), mean l0 and dead_frac (never fired on the set) of a TopK
    SAE with raw-unit parameters: f = ReLU(top-k((x − b_dec) W_enc + b_enc)), x̂ = f W_dec + b_dec."""

    @jax.jit
    def one(x):
        z = (x - params.b_dec) @ params.W_enc + params.b_enc
        vals, idx = jax.lax.top_k(z, k)
        vals = jax.nn.relu(vals)
        x_hat = jnp.einsum("bk,bkd->bd", vals, params.W_dec[idx]) + params.b_dec
        fired = jnp.zeros(params.W_enc.shape[1], jnp.int32).at[idx.reshape(-1)].max((vals > 0).reshape(-1).astype(jnp.int32))
        return jnp.sum(jnp.square(x - x_hat)), jnp.sum(vals > 0), fired

    err = l0 = n = 0.0
    sum_x = sum_sq = 0.0
    fired = None
    for x in batches:
        x = np.asarray(x, np.float32)
        e, active, f = one(jnp.asarray(x))
        err += float(e)
        l0 += float(active)
        n += x.shape[0]
        sum_x = sum_x + x.astype(np.float64).sum(0)
        sum_sq += float(np.square(x.astype(np.float64)).sum())
        fired = np.asarray(f) if fired is None else np.maximum(fired, np.asarray(f))
    total = sum_sq - float(np.dot(sum_x, sum_x)) / n  # Σ‖x − μ‖²
    return {"fvu": err / total, "l0": l0 / n, "dead_frac": float(np.mean(fired == 0)), "eval_rows": int(n)}


def _run_config(spec: WholeRun, d_in: int):
    from jaxdict.sae.config import SAEConfig
    from jaxdict.train.config import DataConfig, RunConfig, RunSettings
    from jaxdict.train.optim import OptimConfig

    return RunConfig(
        sae=SAEConfig(arch="topk", d_in=d_in, n_features=spec.n_features, k=spec.k,
                      dead_tokens=spec.dead_steps * spec.batch_size),
        optim=OptimConfig(lr=spec.lr, total_steps=spec.steps),
        # 5 % of documents held out, as experiments/base.py: the default store has ~220 documents.
        data=DataConfig(source="store", store=spec.store, batch_size=spec.batch_size, eval_rows=spec.eval_rows,
                        eval_fraction=0.05),
        run=RunSettings(name="jaxdict", log_every=50, checkpoint_every=0, progress=False),
    )


def _batches(cfg, sources):
    from jaxdict.data import ActivationLoader
    from jaxdict.train.mesh import make_mesh

    mesh = make_mesh(1, 1, devices=jax.devices()[:1])
    data = cfg.data
    loader = ActivationLoader(sources.train, data.batch_size, mesh, seed=data.seed,
                              slab_rows=min(data.slab_rows, sources.train.n_rows),
                              shuffle_buffer_rows=data.shuffle_buffer_rows)
    return iter(loader)


def train_saelens(spec: WholeRun, cfg, sources) -> tuple[SAEParams, float]:
    """SAETrainer.fit on jaxdict's batches × input_scale; returns raw-unit params and wall seconds."""
    import sae_lens
    import torch
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    scale = float(sources.input_scale)
    start = time.perf_counter()
    torch.manual_seed(0)
    sae = sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(
        d_in=cfg.sae.d_in, d_sae=spec.n_features, k=spec.k, normalize_activations="none"))
    with torch.no_grad():
        sae.b_dec.copy_(torch.from_numpy(np.asarray(sources.data_mean(cfg.data.scale_rows) * scale, np.float32)))
    batches = _batches(cfg, sources)
    provider = (torch.from_numpy(np.asarray(b, np.float32) * np.float32(scale)) for b in batches)
    trainer = SAETrainer(
        cfg=SAETrainerConfig(total_training_samples=spec.steps * spec.batch_size,
                             train_batch_size_samples=spec.batch_size, lr=spec.lr, lr_end=spec.lr,
                             lr_decay_steps=int(0.2 * spec.steps), dead_feature_window=spec.dead_steps,
                             feature_sampling_window=spec.steps, device="cpu"),
        sae=sae, data_provider=provider)
    trained = trainer.fit()
    wall = time.perf_counter() - start
    batches.close()
    trained.fold_W_dec_norm()  # its TopK ranks z·‖W_dec,i‖; folded, the plain formula holds
    t = lambda a: jnp.asarray(a.detach().cpu().numpy(), jnp.float32)  # noqa: E731
    params = SAEParams(W_enc=t(trained.W_enc), b_enc=t(trained.b_enc), W_dec=t(trained.W_dec), b_dec=t(trained.b_dec))
    _check_same_formula(trained, params, scale, sources)
    return fold_input_scale(params, jnp.float32(scale)), wall


def _check_same_formula(sae, params: SAEParams, scale: float, sources) -> None:
    """score_topk's formula must reproduce SAELens's own forward pass, or the scores compare apples
    with pears."""
    import torch

    x = np.asarray(sources.eval.read(0, 256), np.float32) * np.float32(scale)
    with torch.no_grad():
        theirs = sae(torch.from_numpy(x)).numpy()
    z = (x - params.b_dec) @ params.W_enc + params.b_enc
    vals, idx = jax.lax.top_k(z, sae.cfg.k)
    ours = np.asarray(jnp.einsum("bk,bkd->bd", jax.nn.relu(vals), params.W_dec[idx]) + params.b_dec)
    worst = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
    if worst > 1e-3:
        raise RuntimeError(f"score_topk's TopK formula differs from SAELens's forward by {worst:.2e} (relative)")


def run_whole(spec: WholeRun, log: Callable[[str], None] = print) -> dict[str, Any]:
    from jaxdict.evaluate.heldout import iter_activation_batches, split_ranges
    from jaxdict.sae.io import load_run
    from jaxdict.store import open_store
    from jaxdict.train.driver import train
    from jaxdict.train.run_setup import open_sources

    store = open_store(spec.store)
    cfg = _run_config(spec, store.d_in)
    sources = open_sources(cfg)
    out = Path(spec.out_dir)
    ranges = split_ranges(store, "eval", cfg.data.eval_fraction, spec.eval_rows)
    held_out = lambda: iter_activation_batches(store, ranges, 4096)  # noqa: E731

    log(f"jaxdict train: {spec}")
    start = time.perf_counter()
    result = train(cfg, str(out / "jaxdict"), force=True, log=log)
    jax_wall = time.perf_counter() - start
    ours = score_topk(load_run(out / "jaxdict").params, spec.k, held_out())
    log(f"jaxdict: {jax_wall:.0f} s, {ours}")

    log("SAELens SAETrainer.fit ...")
    their_params, lens_wall = train_saelens(spec, cfg, sources)
    theirs = score_topk(their_params, spec.k, held_out())
    log(f"SAELens: {lens_wall:.0f} s, {theirs}")
    tokens = spec.steps * spec.batch_size
    import sae_lens
    import torch

    return {
        "spec": dataclasses.asdict(spec), "tokens": tokens, "jaxdict_finished": result.finished,
        "jaxdict": {"wall_s": jax_wall, "tokens_per_s": tokens / jax_wall, **ours},
        "saelens": {"wall_s": lens_wall, "tokens_per_s": tokens / lens_wall, **theirs,
                    "version": sae_lens.__version__, "torch": torch.__version__, "threads": torch.get_num_threads()},
        "speedup": lens_wall / jax_wall,
    }
