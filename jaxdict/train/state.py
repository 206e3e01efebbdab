"""The train state: everything that changes during training, in one pytree (DESIGN.md §5, point 2).

Shapes first (`jax.eval_shape`), then shardings, then arrays: a fresh start, a resume and an
evaluation job all build the same abstract state and shardings from the config.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdict import run_layout as layout
from jaxdict.sae.config import SAEConfig
from jaxdict.sae.jumprelu_recipe import penalty_coeff
from jaxdict.sae.params import SAEParams, init_params
from jaxdict.sae.transcoder import unit_input_scale
from jaxdict.train.mesh import spec, stored_spec
from jaxdict.train.optim import OptimConfig, make_transform


@struct.dataclass
class TrainState:
    """step; params; opt_state; tokens_since_fired [F]: tokens since each latent last fired (dead = ≥ cfg.dead_tokens);
    input_scale: the scalar s with E‖s·x‖² = d_in (a transcoder's pair (s_in, s_out), one per side); hparams: per-run traced scalars (lr,
    sparsity_coeff) so several runs can share one compiled step under vmap;
    n_nonfinite / consecutive_nonfinite: skipped updates."""

    step: jax.Array
    params: SAEParams
    opt_state: Any
    tokens_since_fired: jax.Array
    input_scale: jax.Array
    hparams: dict[str, jax.Array]
    n_nonfinite: jax.Array
    consecutive_nonfinite: jax.Array


def default_hparams(sae_cfg: SAEConfig, optim_cfg: OptimConfig) -> dict[str, float]:
    sparsity = sae_cfg.l1_coeff if sae_cfg.arch == "relu_l1" else penalty_coeff(sae_cfg)
    return {"lr": optim_cfg.lr, "sparsity_coeff": sparsity}


def init_state(
    sae_cfg: SAEConfig,
    optim_cfg: OptimConfig,
    key: jax.Array,
    input_scale: float | jax.Array = 1.0,
    hparams: dict[str, float] | None = None,
    b_dec: jax.Array | None = None,
) -> TrainState:
    """A fresh state (pure: call under jit or eval_shape). `b_dec`: the decoder bias to start
    from (the driver passes the mean of the normalised training rows, run.init_b_dec="mean");
    None keeps init_params' zeros."""
    params = init_params(sae_cfg, key)
    if b_dec is not None:
        params = params.replace(b_dec=jnp.asarray(b_dec, jnp.float32))
    hp = default_hparams(sae_cfg, optim_cfg) | (hparams or {})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=make_transform(optim_cfg).init(params),
        tokens_since_fired=jnp.zeros((sae_cfg.n_features,), jnp.int32),
        # Always the config's shape (a transcoder's (s_in, s_out); a scalar given scales both).
        input_scale=jnp.broadcast_to(jnp.asarray(input_scale, jnp.float32), unit_input_scale(sae_cfg).shape),
        hparams={k: jnp.asarray(v, jnp.float32) for k, v in hp.items()},
        n_nonfinite=jnp.zeros((), jnp.int32),
        consecutive_nonfinite=jnp.zeros((), jnp.int32),
    )


def param_specs(sae_cfg: SAEConfig, shard: str = "model") -> SAEParams:
    """Parameter specs as sharding mode `shard` stores them (jaxdict.train.mesh.SHARD_MODES); the
    step always computes in the "model" layout."""
    return SAEParams(
        W_enc=stored_spec("d_in", "features", shard=shard),
        b_enc=stored_spec("features", shard=shard),
        W_dec=stored_spec("features", "d_in", shard=shard),
        b_dec=stored_spec("d_out", shard=shard),
        threshold=stored_spec("features", shard=shard) if sae_cfg.has_threshold else None,
        W_skip=stored_spec("d_in", "d_out", shard=shard) if sae_cfg.skip_connection else None,
    )


def state_specs(sae_cfg: SAEConfig, optim_cfg: OptimConfig, abstract: TrainState, shard: str = "model") -> TrainState:
    """PartitionSpecs for every leaf: params by the logical table in the `shard` storage layout,
    Adam moments like their params."""
    p_specs = param_specs(sae_cfg, shard)
    opt_specs = optax.tree_map_params(
        make_transform(optim_cfg),
        lambda _, s: s,
        abstract.opt_state,
        p_specs,
        transform_non_params=lambda _: P(),
        is_leaf=lambda x: isinstance(x, P),
    )
    scalar = P()
    return TrainState(
        step=scalar,
        params=p_specs,
        opt_state=opt_specs,
        tokens_since_fired=spec("features"),
        input_scale=scalar,
        hparams={k: scalar for k in abstract.hparams},
        n_nonfinite=scalar,
        consecutive_nonfinite=scalar,
    )


def add_leading_axis(specs: Any) -> Any:
    """Specs for a stacked (sweep-axis) state: a replicated leading axis on every leaf."""
    return jax.tree.map(lambda s: P(None, *s), specs, is_leaf=lambda x: isinstance(x, P))


def to_shardings(mesh: Mesh, specs: Any) -> Any:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def state_item(state: TrainState) -> dict[str, Any]:
    """The checkpoint's state item: every field but the params item's (params, input_scale)."""
    return {
        "step": state.step,
        "opt_state": state.opt_state,
        "tokens_since_fired": state.tokens_since_fired,
        "hparams": state.hparams,
        "n_nonfinite": state.n_nonfinite,
        "consecutive_nonfinite": state.consecutive_nonfinite,
    }


def to_items(state: TrainState) -> dict[str, Any]:
    """The checkpoint's array items of a state (or of an abstract state: the restore targets)."""
    return {layout.PARAMS: layout.params_item(state.params, state.input_scale), layout.STATE: state_item(state)}


def from_items(items: dict[str, Any]) -> TrainState:
    params, input_scale = layout.params_from_item(items[layout.PARAMS])
    rest = items[layout.STATE]
    return TrainState(step=rest["step"], params=params, opt_state=rest["opt_state"],
                      tokens_since_fired=rest["tokens_since_fired"], input_scale=input_scale,
                      hparams=rest["hparams"], n_nonfinite=rest["n_nonfinite"],
                      consecutive_nonfinite=rest["consecutive_nonfinite"])


def load_or_init_state(
    sae_cfg: SAEConfig,
    optim_cfg: OptimConfig,
    mesh: Mesh,
    *,
    seed: int = 0,
    input_scale: float = 1.0,
    hparams: dict[str, float] | None = None,
    b_dec: Any = None,
    run_dir: str | Path | None = None,
    step: int | None = None,
    shard: str = "model",
) -> layout.Loaded:
    """One run member's train state on `mesh`: checkpoint `step` of `run_dir` (None: the latest)
    with its loader position and config (`.json["data_iter"]`, `.json["config"]`), or — with no
    run_dir or no checkpoint yet — the initial state of seed, input scale, hparams and b_dec
    (`init_state`). Shapes, then shardings (`state_specs`), then arrays (`run_layout.load_or_init`)."""

    def init(key, b_dec):
        return init_state(sae_cfg, optim_cfg, key, input_scale, hparams, b_dec)

    return layout.load_or_init(
        init, jax.random.PRNGKey(seed), b_dec,
        shardings=lambda abstract: to_shardings(mesh, state_specs(sae_cfg, optim_cfg, abstract, shard)),
        run_dir=run_dir, step=step, to_items=to_items, from_items=from_items,
        json_items=(layout.DATA_ITER, layout.CONFIG) if run_dir is not None else ())


def create_state(sae_cfg: SAEConfig, optim_cfg: OptimConfig, mesh: Mesh, seed: int = 0, input_scale: float = 1.0,
                 hparams: dict[str, float] | None = None, b_dec: Any = None,
                 shard: str = "model") -> tuple[TrainState, TrainState]:
    """A fresh state initialised directly into its shardings (`shard`: the storage layout).
    Returns (state, shardings)."""
    loaded = load_or_init_state(sae_cfg, optim_cfg, mesh, seed=seed, input_scale=input_scale, hparams=hparams,
                                b_dec=b_dec, shard=shard)
    return loaded.value, loaded.shardings
