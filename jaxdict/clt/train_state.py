"""The CLT's train state for `jaxdict train`: what changes during a CLT run, in one pytree, with its
shardings and its checkpoint items (the one layout of jaxdict.run_layout).

Checkpoint items (format version 2, as an SAE run's; jaxdict/run_layout.py):

    params   {"W_enc" [L, d, F], "b_enc" [L, F], "W_dec_0" [F, L, d] … "W_dec_{L−1}" [F, 1, d],
              "b_dec" [L, d], ["threshold" [L, F]], "input_scale" [2, L]} — as trained, on rows
              scaled by input_scale (row 0: s_in of resid_mid.l, row 1: s_out of mlp_out.l);
              jaxdict.clt.run.load_clt_run folds the scales back to raw units.
    state    {"step", "opt_state", "hparams", "n_nonfinite", "consecutive_nonfinite"}

The ragged decoder is one array per source layer, named like circuit-tracer's W_dec_<l>, so every
params leaf is a plain array whose shape run_layout checks against the config before restoring.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, PartitionSpec as P

from jaxdict import run_layout as layout
from jaxdict.clt.config import CLTConfig
from jaxdict.clt.params import CLTParams, init_params, param_specs
from jaxdict.train.optim import OptimConfig, make_transform
from jaxdict.train.state import to_shardings


@struct.dataclass
class CLTTrainState:
    """step; params (as trained); opt_state (Adam over params); input_scale [2, L]: s with
    E‖s·x‖² = d per hook (row 0 the inputs resid_mid.l, row 1 the targets mlp_out.l); hparams:
    per-run traced scalars (lr, sparsity_coeff), so a sweep axis shares one compiled step;
    n_nonfinite / consecutive_nonfinite: skipped updates (as jaxdict.train.state.TrainState)."""

    step: jax.Array
    params: CLTParams
    opt_state: Any
    input_scale: jax.Array
    hparams: dict[str, jax.Array]
    n_nonfinite: jax.Array
    consecutive_nonfinite: jax.Array


def init_clt_state(cfg: CLTConfig, optim_cfg: OptimConfig, key: jax.Array, input_scale: Any = 1.0,
                   hparams: dict[str, float] | None = None, b_dec: Any = None) -> CLTTrainState:
    """A fresh state (pure: call under jit or eval_shape; the driver jits it into its shardings)."""
    params = init_params(cfg, key)
    if b_dec is not None:
        params = params.replace(b_dec=jnp.asarray(b_dec, jnp.float32))
    hp = {"lr": optim_cfg.lr, "sparsity_coeff": cfg.sparsity_coeff} | (hparams or {})
    return CLTTrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=make_transform(optim_cfg).init(params),
        input_scale=jnp.broadcast_to(jnp.asarray(input_scale, jnp.float32), (2, cfg.n_layers)),
        hparams={k: jnp.asarray(v, jnp.float32) for k, v in hp.items()},
        n_nonfinite=jnp.zeros((), jnp.int32),
        consecutive_nonfinite=jnp.zeros((), jnp.int32),
    )


def clt_state_specs(optim_cfg: OptimConfig, abstract: CLTTrainState) -> CLTTrainState:
    """Features over `model` (jaxdict.clt.params.param_specs), Adam moments like their params,
    everything else replicated."""
    p_specs = param_specs(abstract.params)
    opt_specs = optax.tree_map_params(make_transform(optim_cfg), lambda _, s: s, abstract.opt_state, p_specs,
                                      transform_non_params=lambda _: P(), is_leaf=lambda x: isinstance(x, P))
    scalar = P()
    return CLTTrainState(step=scalar, params=p_specs, opt_state=opt_specs, input_scale=scalar,
                         hparams={k: scalar for k in abstract.hparams}, n_nonfinite=scalar,
                         consecutive_nonfinite=scalar)


def clt_params_item(params: CLTParams, input_scale: Any) -> dict[str, Any]:
    item = {"W_enc": params.W_enc, "b_enc": params.b_enc}
    item.update({f"W_dec_{layer}": block for layer, block in enumerate(params.W_dec)})
    item["b_dec"] = params.b_dec
    if params.threshold is not None:
        item["threshold"] = params.threshold
    item["input_scale"] = input_scale
    return item


def clt_params_from_item(item: dict[str, Any]) -> tuple[CLTParams, Any]:
    n_layers = item["W_enc"].shape[0]
    params = CLTParams(W_enc=item["W_enc"], b_enc=item["b_enc"],
                       W_dec=tuple(item[f"W_dec_{layer}"] for layer in range(n_layers)), b_dec=item["b_dec"],
                       threshold=item.get("threshold"))
    return params, item["input_scale"]


def clt_to_items(state: CLTTrainState) -> dict[str, Any]:
    rest = {"step": state.step, "opt_state": state.opt_state, "hparams": state.hparams,
            "n_nonfinite": state.n_nonfinite, "consecutive_nonfinite": state.consecutive_nonfinite}
    return {layout.PARAMS: clt_params_item(state.params, state.input_scale), layout.STATE: rest}


def clt_from_items(items: dict[str, Any]) -> CLTTrainState:
    params, input_scale = clt_params_from_item(items[layout.PARAMS])
    rest = items[layout.STATE]
    return CLTTrainState(step=rest["step"], params=params, opt_state=rest["opt_state"], input_scale=input_scale,
                         hparams=rest["hparams"], n_nonfinite=rest["n_nonfinite"],
                         consecutive_nonfinite=rest["consecutive_nonfinite"])


def load_or_init_clt_state(cfg: CLTConfig, optim_cfg: OptimConfig, mesh: Mesh, *, seed: int = 0,
                           input_scale: Any = 1.0, hparams: dict[str, float] | None = None, b_dec: Any = None,
                           run_dir: str | Path | None = None, step: int | None = None) -> layout.Loaded:
    """One member's state on `mesh`: checkpoint `step` of `run_dir` (None: the latest; with its
    loader position and config as `.json`), or the initial state (shapes, shardings, then arrays)."""

    def init(key, b_dec):
        return init_clt_state(cfg, optim_cfg, key, input_scale, hparams, b_dec)

    return layout.load_or_init(
        init, jax.random.PRNGKey(seed), b_dec,
        shardings=lambda abstract: to_shardings(mesh, clt_state_specs(optim_cfg, abstract)),
        run_dir=run_dir, step=step, to_items=clt_to_items, from_items=clt_from_items,
        json_items=(layout.DATA_ITER, layout.CONFIG) if run_dir is not None else ())
