"""The train state: everything that changes during training, in one pytree (DESIGN.md §5, point 2).

Shapes first (`jax.eval_shape`), then shardings, then arrays: a fresh start, a resume and an
evaluation job all build the same abstract state and shardings from the config.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdict.sae.config import SAEConfig
from jaxdict.sae.params import SAEParams, init_params
from jaxdict.train.mesh import spec
from jaxdict.train.optim import OptimConfig, make_transform


@struct.dataclass
class TrainState:
    """step; params; opt_state; rng (raw uint32 key, folded with the step when used);
    tokens_since_fired [F]: tokens since each latent last fired (dead = ≥ cfg.dead_tokens);
    input_scale: the scalar s with E‖s·x‖² = d_in; hparams: per-run traced scalars (lr,
    sparsity_coeff) so several runs can share one compiled step under vmap;
    n_nonfinite / consecutive_nonfinite: skipped updates."""

    step: jax.Array
    params: SAEParams
    opt_state: Any
    rng: jax.Array
    tokens_since_fired: jax.Array
    input_scale: jax.Array
    hparams: dict[str, jax.Array]
    n_nonfinite: jax.Array
    consecutive_nonfinite: jax.Array


def default_hparams(sae_cfg: SAEConfig, optim_cfg: OptimConfig) -> dict[str, float]:
    sparsity = sae_cfg.l1_coeff if sae_cfg.arch == "relu_l1" else sae_cfg.l0_coeff
    return {"lr": optim_cfg.lr, "sparsity_coeff": sparsity}


def init_state(
    sae_cfg: SAEConfig,
    optim_cfg: OptimConfig,
    key: jax.Array,
    input_scale: float | jax.Array = 1.0,
    hparams: dict[str, float] | None = None,
) -> TrainState:
    """A fresh state (pure: call under jit or eval_shape)."""
    params = init_params(sae_cfg, key)
    hp = default_hparams(sae_cfg, optim_cfg) | (hparams or {})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=make_transform(optim_cfg).init(params),
        rng=jax.random.fold_in(key, 1),
        tokens_since_fired=jnp.zeros((sae_cfg.n_features,), jnp.int32),
        input_scale=jnp.asarray(input_scale, jnp.float32),
        hparams={k: jnp.asarray(v, jnp.float32) for k, v in hp.items()},
        n_nonfinite=jnp.zeros((), jnp.int32),
        consecutive_nonfinite=jnp.zeros((), jnp.int32),
    )


def param_specs(sae_cfg: SAEConfig) -> SAEParams:
    return SAEParams(
        W_enc=spec("d_in", "features"),
        b_enc=spec("features"),
        W_dec=spec("features", "d_in"),
        b_dec=spec("d_in"),
        threshold=spec("features") if sae_cfg.has_threshold else None,
    )


def state_specs(sae_cfg: SAEConfig, optim_cfg: OptimConfig, abstract: TrainState) -> TrainState:
    """PartitionSpecs for every leaf: params by the logical table, Adam moments like their params."""
    p_specs = param_specs(sae_cfg)
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
        rng=scalar,
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


def create_state(
    sae_cfg: SAEConfig,
    optim_cfg: OptimConfig,
    mesh: Mesh,
    seed: int = 0,
    input_scale: float = 1.0,
    hparams: dict[str, float] | None = None,
) -> tuple[TrainState, TrainState]:
    """Initialise a state directly into its shardings. Returns (state, shardings)."""

    def init(key):
        return init_state(sae_cfg, optim_cfg, key, input_scale, hparams)

    key = jax.random.PRNGKey(seed)
    abstract = jax.eval_shape(init, key)
    shardings = to_shardings(mesh, state_specs(sae_cfg, optim_cfg, abstract))
    state = jax.jit(init, out_shardings=shardings)(key)
    return state, shardings
