"""What a CLT run needs before its first step, for jaxdict.train.driver (which calls
`setup_clt_group` when a RunConfig has a `clt` section): the 2L row-aligned stores as one loader
source with a scale per hook, the resolved config, and the group (built step, checkpoint managers,
restored or fresh state) that the SAE driver's TrainLoop then runs unchanged — same run folder,
checkpoints, resume, preemption, non-finite handling and sweep axis.

Scales: each hook gets its own s = sqrt(d / E‖x‖²) from its store's stats (DESIGN.md §4, as an SAE
input and as a transcoder's two sides, jaxdict/sae/transcoder.py), because residual streams and MLP
outputs grow with depth at different rates; rows are multiplied by them inside the step, and
jaxdict.clt.run folds them out again when loading or exporting.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import numpy as np

from jaxdict.clt.heldout import CLTHeldoutEval
from jaxdict.clt.train_state import clt_to_items, load_or_init_clt_state
from jaxdict.clt.train_step import build_clt_step
from jaxdict.data import ArraySource
from jaxdict.sae.config import ConfigError
from jaxdict.train import checkpoint as ckpt
from jaxdict.train.config import RunConfig
from jaxdict.train.mesh import make_mesh
from jaxdict.train.run_setup import DataSources, prepare_run_dir


def hook_scales(rows: np.ndarray, n_layers: int, d_model: int) -> np.ndarray:
    """[2, L] scales sqrt(d / E‖x‖²) of each d-wide block of [N, 2·L·d] rows (finite rows only)."""
    x = np.asarray(rows, np.float64)
    x = x[np.all(np.isfinite(x), axis=1)].reshape(-1, 2, n_layers, d_model)
    mean_sq = np.mean(np.sum(x * x, axis=-1), axis=0)
    if x.shape[0] == 0 or not np.all(np.isfinite(mean_sq) & (mean_sq > 0)):
        raise ConfigError(f"cannot scale CLT rows: E‖x‖² per hook = {mean_sq.tolist()} over {x.shape[0]} rows")
    return np.sqrt(d_model / mean_sq)


def open_clt_sources(cfg: RunConfig) -> DataSources:
    """data.store/resid_mid.0 … mlp_out.{L−1} joined row by row (MultiStoreSource, its alignment
    checks), each store's width and hook checked; or planted cross-layer rows (data.source planted)."""
    from jaxdict.data.multi import MultiStoreSource, clt_store_paths

    clt, data = cfg.clt, cfg.data
    L, d = clt.n_layers, clt.d_model
    if data.source == "planted":
        from jaxdict.clt.planted import planted_clt_rows

        rows = planted_clt_rows(data.planted_rows, L, d, n_planted=data.planted_features,
                                mean_active=data.planted_mean_active, seed=data.planted_seed)
        train = ArraySource(rows, split="train", eval_fraction=data.eval_fraction)
        first = train.read(0, min(train.n_rows, data.scale_rows))
        return DataSources(train, ArraySource(rows, split="eval", eval_fraction=data.eval_fraction),
                           hook_scales(first, L, d), model="planted", hook=f"planted_seed={data.planted_seed}",
                           mean=first.astype(np.float64).mean(axis=0))
    paths = clt_store_paths(data.store, L)
    train = MultiStoreSource(paths, split="train", eval_fraction=data.eval_fraction)
    evals = MultiStoreSource(paths, split="eval", eval_fraction=data.eval_fraction, check=False)
    scales, means = [], []
    for path, source in zip(paths, train.sources):
        store = source.store
        if store.d_in != d:
            raise ConfigError(f"store {path} holds activations of width {store.d_in}, but clt.d_model = {d}; "
                              f"set clt.d_model={store.d_in}")
        hook = str(store.metadata.get("hook", ""))
        if hook and hook != path.name:
            raise ConfigError(f"store {path} was harvested at hook {hook!r}, but a CLT reads {path.name!r} there")
        scales.append(math.sqrt(d / float(store.stats["mean_sq_norm"])))
        means.append(np.asarray(store.stats["mean"], np.float64))
    model = str(train.sources[0].store.metadata.get("model", ""))
    if data.model and data.model != model:
        raise ConfigError(f"data.model = {data.model!r} but {paths[0]} was harvested with model {model!r}")
    return DataSources(train, evals, np.asarray(scales).reshape(2, L), model=model,
                       hook=f"resid_mid.0-{L - 1}", target_hook=f"mlp_out.0-{L - 1}", mean=np.concatenate(means))


def resolve_clt(cfg: RunConfig, sources: DataSources, run_dir: str) -> dict:
    """The resolved config (config.json and every checkpoint): store metadata recorded."""
    d = cfg.to_dict()
    d["data"]["model"] = sources.model
    d["run"]["out_dir"] = str(run_dir)
    return d


def initial_clt_b_dec(cfg: RunConfig, sources: DataSources) -> np.ndarray | None:
    """b_dec [L, d] at step 0: the mean of each scaled target (run.init_b_dec = "mean", the SAE
    driver's rule), or None for zeros."""
    if cfg.run.init_b_dec != "mean":
        return None
    L, d = cfg.clt.n_layers, cfg.clt.d_model
    mean = sources.data_mean(cfg.data.scale_rows).reshape(2, L, d)[1]
    return (mean * np.asarray(sources.input_scale, np.float64)[1][:, None]).astype(np.float32)


def setup_clt_group(cfgs: list[RunConfig], run_dirs: list[str], *, force: bool = False,
                    sources: DataSources | None = None, log: Callable[[str], None] = print):
    """jaxdict.train.driver.setup_group for CLT configs (already checked to share one pass)."""
    from jaxdict.train.driver import Group, common_resume_step, stack_members

    base = cfgs[0]
    mesh = make_mesh(base.mesh.data, base.mesh.model)
    sources = sources or open_clt_sources(base)
    width = 2 * base.clt.n_layers * base.clt.d_model
    if sources.train.d_in != width:
        raise ConfigError(f"data rows have width {sources.train.d_in} but a CLT of clt.n_layers={base.clt.n_layers}, "
                          f"clt.d_model={base.clt.d_model} takes 2·L·d = {width}")
    built = build_clt_step(base.clt, base.optim, mesh, base.data.batch_size,
                           sweep_size=len(cfgs) if len(cfgs) > 1 else None)
    resolved = [resolve_clt(c, sources, d) for c, d in zip(cfgs, run_dirs)]
    existed = [prepare_run_dir(d, r, force, write=jax.process_index() == 0) for d, r in zip(run_dirs, resolved)]
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxdict run folders ready")
    managers = [ckpt.make_manager(d, base.run.keep, base.run.async_checkpoint) for d in run_dirs]
    start = common_resume_step(managers) if all(existed) else 0
    b_dec = None if start else initial_clt_b_dec(base, sources)
    members = [load_or_init_clt_state(c.clt, c.optim, mesh, seed=c.run.seed, input_scale=sources.input_scale,
                                      hparams={"lr": c.optim.lr, "sparsity_coeff": c.clt.sparsity_coeff},
                                      b_dec=b_dec, run_dir=d if start else None, step=start or None)
               for c, d in zip(cfgs, run_dirs)]
    if start:
        log(f"resuming {', '.join(c.run.name for c in cfgs)} from step {start}")
    state = stack_members(built, [m.value for m in members])
    evaluator = CLTHeldoutEval(sources.eval, base.clt, mesh, base.data.batch_size, base.data.eval_rows,
                               base.data.slab_rows, built.state_shardings, built.sweep_size)
    return Group(cfgs=cfgs, run_dirs=run_dirs, resolved=resolved, sources=sources, mesh=mesh, built=built,
                 managers=managers, start=start, state=state, data_state=members[0].json.get("data_iter"),
                 to_items=clt_to_items, evaluator=evaluator)
