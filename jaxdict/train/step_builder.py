"""The train step `jaxdict train` runs, and the abstract arguments it is called with.

One place builds it, so the driver and an ahead-of-time planner compile the same program:

    built = build_train_step(cfg, mesh, sweep_size=None)
    compiled = built.step.lower(built.abstract_state, built.abstract_batch).compile()  # no arrays
    ...
    state, metrics = built.step(state, batch)                                          # the driver

Shapes come first (`jax.eval_shape` of the initial state), then shardings (the logical-axis table
in `mesh.py`, in the storage layout of `cfg.mesh.shard`, with a replicated leading axis per sweep
member), then — in the driver only — arrays.
"""
from __future__ import annotations

import dataclasses
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxdict.train.config import RunConfig
from jaxdict.train.mesh import batch_sharding
from jaxdict.train.state import TrainState, add_leading_axis, init_state, state_specs, to_shardings
from jaxdict.train.step import TrainStep

# The loader casts every batch to this dtype on the host (the step casts to float32 again inside,
# so a bfloat16 store costs no precision it did not already lose).
BATCH_DTYPE = np.dtype(np.float32)


@dataclasses.dataclass(frozen=True)
class BuiltStep:
    """What `build_train_step` returns.

    step: the jitted step `(state, batch) -> (state, metrics)` (a `TrainStep`): in_shardings
        (state_shardings, batch sharding), out_shardings (state_shardings, replicated metrics),
        the state donated (argument 0), vmapped over the leading axis of the state when
        `sweep_size` is set (every member sees the same batch). `step.lower(...)` lowers it.
    abstract_state: a TrainState of `jax.ShapeDtypeStruct`s carrying `state_shardings` — what
        the step is called with ([sweep_size, ...] on every leaf when stacked).
    abstract_batch: `ShapeDtypeStruct([data.batch_size, sae.d_in], BATCH_DTYPE)` with the batch
        sharding (rows over the mesh's `data` axis).
    state_shardings: NamedShardings of the (stacked) state; member_shardings: of one member.
    """

    step: TrainStep
    abstract_state: TrainState
    abstract_batch: jax.ShapeDtypeStruct
    state_shardings: TrainState
    member_shardings: TrainState
    mesh: Mesh
    sweep_size: int | None

    @property
    def batch_sharding(self) -> NamedSharding:
        return self.step.batch_sharding


def abstract_member_state(cfg: RunConfig) -> TrainState:
    """The shapes and dtypes of one member's train state (`jax.eval_shape`, no arrays)."""
    return jax.eval_shape(lambda k: init_state(cfg.sae, cfg.optim, k), jax.random.PRNGKey(0))


def build_train_step(cfg: RunConfig, mesh: Mesh, *, sweep_size: int | None = None) -> BuiltStep:
    """The exact jitted train step of `jaxdict train` for `cfg` on `mesh`, with its abstract
    (sharded ShapeDtypeStruct) state and batch, so it can be lowered and compiled without arrays.

    cfg: the run's config (for a sweep axis, any member: they share every field that shapes the
        step — `group_key`); mesh: a `data × model` mesh (`make_mesh`, or one of abstract/AOT
        devices). sweep_size: None for one run, N >= 2 for N stacked members trained under vmap.
    Raises ConfigError when the batch or the features do not split evenly over the mesh.
    """
    if sweep_size is not None and sweep_size < 2:
        raise ValueError(f"sweep_size must be None (one run) or >= 2, got {sweep_size}")
    if cfg.clt is not None:
        from jaxdict.sae.config import ConfigError

        raise ConfigError("this config trains a CLT (clt is set): its step is jaxdict.clt.train_step.build_clt_step; "
                          "the SAE step builder (and jaxdict plan, which uses it) does not cover CLTs")
    abstract = abstract_member_state(cfg)
    specs = state_specs(cfg.sae, cfg.optim, abstract, shard=cfg.mesh.shard)
    member_shardings = to_shardings(mesh, specs)
    if sweep_size is None:
        state_shardings = member_shardings
    else:
        state_shardings = to_shardings(mesh, add_leading_axis(specs))
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct((sweep_size, *a.shape), a.dtype), abstract)
    abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abstract, state_shardings)
    step = TrainStep(cfg.sae, cfg.optim, mesh, state_shardings, cfg.data.batch_size, sweep_size=sweep_size,
                     shard=cfg.mesh.shard)
    abstract_batch = jax.ShapeDtypeStruct((cfg.data.batch_size, cfg.sae.d_in), BATCH_DTYPE,
                                          sharding=batch_sharding(mesh))
    return BuiltStep(step=step, abstract_state=abstract_state, abstract_batch=abstract_batch,
                     state_shardings=state_shardings, member_shardings=member_shardings, mesh=mesh,
                     sweep_size=sweep_size)

