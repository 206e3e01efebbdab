"""The CLT step `jaxdict train` runs: `(state, batch) -> (state, metrics)`, jitted once with explicit
shardings, vmapped over a leading sweep axis when several runs share the pass (as the SAE's
jaxdict/train/step.py). The maths is jaxdict.clt.forward.clt_loss; what this adds is the driver's
contract: raw store rows scaled per hook by the state's input_scale, λ and lr from the state's
traced hparams (with OptimConfig's warm-up and decay), gradient clipping + Adam (make_transform),
and a step that is skipped — params and Adam state unchanged, counters moved — when the loss or a
gradient is non-finite.

Batch rows are [resid_mid.0 … resid_mid.{L−1} | mlp_out.0 … mlp_out.{L−1}] (MultiStoreSource).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdict.clt.config import CLTConfig
from jaxdict.clt.forward import clt_loss
from jaxdict.clt.params import CLTParams
from jaxdict.clt.step import _ema_threshold, split_rows
from jaxdict.clt.train_state import CLTTrainState, clt_state_specs, init_clt_state
from jaxdict.sae.config import ConfigError
from jaxdict.train.mesh import batch_sharding, check_divisible
from jaxdict.train.optim import OptimConfig, lr_multiplier, make_transform, sparsity_multiplier
from jaxdict.train.state import add_leading_axis, to_shardings


def row_scales(input_scale: jax.Array, d_model: int) -> jax.Array:
    """input_scale [2, L] -> one scale per column of a [B, 2·L·d] row."""
    return jnp.repeat(input_scale.reshape(-1), d_model)


def _loss_with(params: CLTParams, x, y, lam, cfg: CLTConfig, mesh):
    """clt_loss with λ traced (the state's hparam) instead of the config's constant."""
    _, (out, parts) = clt_loss(params, x, y, dataclasses.replace(cfg, sparsity_coeff=0.0), mesh)
    return parts["mse"] + lam * parts["penalty"], (out, parts)


def _update(state: CLTTrainState, grads: CLTParams, lr, batch_threshold, finite, cfg: CLTConfig,
            optim_cfg: OptimConfig):
    tx = make_transform(optim_cfg)

    def apply(_):
        # optax's bias correction raises a float to an int32 count, which strict promotion rejects.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, jax.tree.map(lambda u: -lr * u, updates))
        if cfg.arch == "jumprelu":  # θ > 0, as jaxdict's SAE step keeps it (train/step.py)
            params = params.replace(threshold=jnp.maximum(params.threshold, 1e-6))
        if cfg.arch == "batchtopk":
            params = _ema_threshold(params, batch_threshold, cfg)
        return params, opt_state

    return jax.lax.cond(finite, apply, lambda _: (state.params, state.opt_state), None)


def clt_train_step(state: CLTTrainState, batch: jax.Array, *, cfg: CLTConfig, optim_cfg: OptimConfig,
                   mesh: Mesh | None) -> tuple[CLTTrainState, dict[str, jax.Array]]:
    rows = batch.astype(jnp.float32) * row_scales(state.input_scale, cfg.d_model)
    x, y = split_rows(rows, cfg)
    # λ warms up like the SAE's (Anthropic, April 2024); the L0-target penalty starts on target.
    warm = 1.0 if cfg.penalty == "l0_target" else sparsity_multiplier(state.step, optim_cfg)
    lam = state.hparams["sparsity_coeff"] * warm
    (loss, (out, parts)), grads = jax.value_and_grad(_loss_with, has_aux=True)(state.params, x, y, lam, cfg, mesh)
    if cfg.arch == "batchtopk":  # the inference threshold is an EMA, not trained
        grads = grads.replace(threshold=jnp.zeros_like(grads.threshold))
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    lr = state.hparams["lr"] * lr_multiplier(state.step, optim_cfg)
    params, opt_state = _update(state, grads, lr, out.batch_threshold, finite, cfg, optim_cfg)
    new = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        n_nonfinite=state.n_nonfinite + jnp.where(finite, 0, 1).astype(jnp.int32),
        consecutive_nonfinite=jnp.where(finite, 0, state.consecutive_nonfinite + 1).astype(jnp.int32))
    metrics = {"loss": loss, "mse": parts["mse"], "penalty": parts["penalty"], "fvu": jnp.mean(parts["fvu"]),
               "l0": jnp.mean(parts["l0"]), "grad_norm": grad_norm, "lr": lr,
               "sparsity_coeff": jnp.asarray(lam, jnp.float32), "nonfinite": jnp.where(finite, 0.0, 1.0),
               "n_nonfinite": new.n_nonfinite, "consecutive_nonfinite": new.consecutive_nonfinite}
    for layer in range(cfg.n_layers):
        metrics[f"fvu_{layer}"] = parts["fvu"][layer]
        metrics[f"l0_{layer}"] = parts["l0"][layer]
    return new, metrics


class CLTTrainStep:
    """The jitted step for (configs, mesh, batch size): the state donated, shapes checked first;
    `sweep_size=N` steps N stacked states on the same batch under vmap."""

    def __init__(self, cfg: CLTConfig, optim_cfg: OptimConfig, mesh: Mesh, state_shardings: Any, batch_size: int,
                 sweep_size: int | None = None):
        check_divisible(mesh, batch_size=batch_size, n_features=cfg.n_features)
        self.cfg, self.batch_size, self.sweep_size = cfg, batch_size, sweep_size
        fn: Callable = functools.partial(clt_train_step, cfg=cfg, optim_cfg=optim_cfg, mesh=mesh)
        if sweep_size is not None:
            fn = jax.vmap(fn, in_axes=(0, None))
        self.batch_sharding = batch_sharding(mesh)
        # As jaxdict.train.step.TrainStep: XLA:CPU with many fake devices on few cores can deadlock
        # collectives of several in-flight steps, so the CPU waits for each step.
        self.sync_each_step = jax.default_backend() == "cpu" and mesh.size > 1
        self._jitted = jax.jit(fn, in_shardings=(state_shardings, self.batch_sharding),
                               out_shardings=(state_shardings, NamedSharding(mesh, P())), donate_argnums=(0,))

    def __call__(self, state: CLTTrainState, batch: jax.Array):
        want = (self.batch_size, 2 * self.cfg.n_layers * self.cfg.d_model)
        if tuple(batch.shape) != want:
            raise ConfigError(f"CLT batch shape {tuple(batch.shape)}; the compiled step expects {want} "
                              f"(rows [resid_mid.0..{self.cfg.n_layers - 1} | mlp_out.0..{self.cfg.n_layers - 1}] "
                              f"of d_model={self.cfg.d_model} each)")
        out = self._jitted(state, batch)
        if self.sync_each_step:
            jax.block_until_ready(out)
        return out

    def lower(self, state, batch):
        return self._jitted.lower(state, batch)


@dataclasses.dataclass(frozen=True)
class BuiltCLTStep:
    """What the driver's loop needs of a step (the fields of jaxdict.train.step_builder.BuiltStep)."""

    step: CLTTrainStep
    abstract_state: CLTTrainState
    abstract_batch: jax.ShapeDtypeStruct
    state_shardings: CLTTrainState
    member_shardings: CLTTrainState
    mesh: Mesh
    sweep_size: int | None


def build_clt_step(cfg: CLTConfig, optim_cfg: OptimConfig, mesh: Mesh, batch_size: int,
                   sweep_size: int | None = None) -> BuiltCLTStep:
    abstract = jax.eval_shape(lambda k: init_clt_state(cfg, optim_cfg, k), jax.random.PRNGKey(0))
    specs = clt_state_specs(optim_cfg, abstract)
    member_shardings = to_shardings(mesh, specs)
    state_shardings = member_shardings
    if sweep_size is not None:
        state_shardings = to_shardings(mesh, add_leading_axis(specs))
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct((sweep_size, *a.shape), a.dtype), abstract)
    abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abstract, state_shardings)
    step = CLTTrainStep(cfg, optim_cfg, mesh, state_shardings, batch_size, sweep_size)
    abstract_batch = jax.ShapeDtypeStruct((batch_size, 2 * cfg.n_layers * cfg.d_model), np.float32,
                                          sharding=batch_sharding(mesh))
    return BuiltCLTStep(step=step, abstract_state=abstract_state, abstract_batch=abstract_batch,
                        state_shardings=state_shardings, member_shardings=member_shardings, mesh=mesh,
                        sweep_size=sweep_size)
