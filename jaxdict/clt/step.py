"""The pure sharded CLT train step: parameters and Adam state split over `model` per feature, the
batch over `data`; one jit with explicit in/out shardings, so a step on any mesh computes what the
single-device step computes (tests/test_clt_step.py).

Batch rows are [x_0 … x_{L−1} | y_0 … y_{L−1}] (resid_mid.l then mlp_out.l, each d wide): what
jaxdict.data.multi.MultiStoreSource serves for the 2L row-aligned stores, in that order.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdict.clt.config import CLTConfig
from jaxdict.clt.forward import clt_loss
from jaxdict.clt.params import CLTParams, init_params, param_shardings
from jaxdict.sae.axes import DATA


def split_rows(batch: jax.Array, cfg: CLTConfig) -> tuple[jax.Array, jax.Array]:
    """[B, 2·L·d] -> (x [B, L, d], y [B, L, d])."""
    L, d = cfg.n_layers, cfg.d_model
    if batch.ndim != 2 or batch.shape[1] != 2 * L * d:
        raise ValueError(f"CLT batch rows must be [B, 2·L·d] = [B, {2 * L * d}] (resid_mid.0..{L - 1} then "
                         f"mlp_out.0..{L - 1}), got shape {batch.shape}")
    both = batch.reshape(batch.shape[0], 2, L, d)
    return both[:, 0], both[:, 1]


def _ema_threshold(params: CLTParams, batch_threshold: jax.Array, cfg: CLTConfig) -> CLTParams:
    """BatchTopK's inference threshold per layer: an EMA of the smallest positive kept activation
    (jaxdict's SAE rule, train/step.py; 0 = not yet estimated, inf = nothing kept: unchanged)."""
    old = params.threshold
    new = batch_threshold[:, None]
    decay = jnp.float32(cfg.threshold_ema_decay)
    ema = jnp.where(old > 0, decay * old + (1 - decay) * new, new)
    return params.replace(threshold=jnp.where(jnp.isfinite(new), ema, old))


@dataclasses.dataclass
class CLTTrainer:
    """step(params, opt_state, batch) -> (params, opt_state, metrics), jitted for `mesh`."""

    cfg: CLTConfig
    optimizer: optax.GradientTransformation
    mesh: Mesh
    params_sharding: Any = None
    opt_sharding: Any = None
    batch_sharding: Any = None
    step: Callable = None

    def __post_init__(self):
        abstract = jax.eval_shape(lambda: init_params(self.cfg, jax.random.PRNGKey(0)))
        self.params_sharding = param_shardings(abstract, self.mesh)
        replicated = NamedSharding(self.mesh, P())
        opt_abstract = jax.eval_shape(self.optimizer.init, abstract)
        self.opt_sharding = optax.tree_map_params(
            self.optimizer, lambda _, s: s, opt_abstract, self.params_sharding,
            transform_non_params=lambda _: replicated)
        self.batch_sharding = NamedSharding(self.mesh, P(DATA, None))
        self.step = jax.jit(
            self._step, in_shardings=(self.params_sharding, self.opt_sharding, self.batch_sharding),
            out_shardings=(self.params_sharding, self.opt_sharding, replicated), donate_argnums=(0, 1))

    def init(self, seed: int = 0):
        params = jax.jit(lambda: init_params(self.cfg, jax.random.PRNGKey(seed)),
                         out_shardings=self.params_sharding)()
        opt_state = jax.jit(self.optimizer.init, out_shardings=self.opt_sharding)(params)
        return params, opt_state

    def _step(self, params: CLTParams, opt_state, batch):
        x, y = split_rows(batch, self.cfg)
        (loss, (out, parts)), grads = jax.value_and_grad(clt_loss, has_aux=True)(params, x, y, self.cfg, self.mesh)
        if self.cfg.arch == "batchtopk":  # the EMA is not trained: keep Adam off it
            grads = grads.replace(threshold=jnp.zeros_like(grads.threshold))
        # optax's bias correction raises a float to an int32 count, which strict dtype promotion
        # rejects; allow standard promotion inside optax only (as jaxdict's SAE step does).
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = self.optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if self.cfg.arch == "jumprelu":  # θ > 0, as jaxdict's SAE step keeps it (train/step.py)
            params = params.replace(threshold=jnp.maximum(params.threshold, 1e-6))
        if self.cfg.arch == "batchtopk":
            params = _ema_threshold(params, out.batch_threshold, self.cfg)
        metrics = {"loss": loss, **parts}
        return params, opt_state, metrics
