"""Periodic evaluation on the held-out split during training (DESIGN.md §4 metric names).

The metrics are those of `jaxdict.sae.metric_sums` (the same sums `jaxdict eval` uses), on inputs
in the trained units (x · input_scale), plus the training loss; fvu uses μ, the mean over every
evaluated row, not per batch.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxdict.data import ActivationLoader
from jaxdict.sae.axes import DATA, spec
from jaxdict.sae.config import ConfigError, SAEConfig
from jaxdict.sae.losses import sae_loss
from jaxdict.sae.metric_sums import add_sums, metrics_from_sums, reconstruction_sums
from jaxdict.sae.transcoder import column_scales
from jaxdict.train.state import TrainState

# The metrics a training run's held-out evaluation reports (mse is left out: here it would be in
# the trained units, unlike `jaxdict eval`'s raw-unit mse); a Matryoshka SAE adds fvu_prefix_<m> and
# l0_prefix_<m> for its inner prefixes.
REPORTED = ("fvu", "explained_variance", "l0", "dead_frac", "dense_frac")


def _batch_sums(state: TrainState, x: jax.Array, shift: jax.Array, *, cfg: SAEConfig, mesh: Mesh):
    xs = x.astype(jnp.float32) * column_scales(state.input_scale, cfg)
    sums = reconstruction_sums(state.params, xs, shift, cfg, mesh)
    no_dead = jnp.zeros((cfg.n_features,), bool)
    loss, _ = sae_loss(state.params, xs, cfg, mesh, sparsity_coeff=state.hparams["sparsity_coeff"], dead=no_dead)
    sums["loss_sum"] = loss * jnp.float32(x.shape[0])
    return sums


def heldout_loader(source: Any, mesh: Mesh, batch_size: int, max_rows: int,
                   slab_rows: int) -> tuple[ActivationLoader, int, int]:
    """One pass over the held-out split: (loader, batch size, number of batches to evaluate).

    A split smaller than a training batch is evaluated in one smaller batch (a multiple of the data
    axis and of the process count, as the loader needs); slabs shrink so that each process still
    gets at least one."""
    n_proc = jax.process_count()
    unit = math.lcm(mesh.shape[DATA], n_proc)
    batch_size = min(batch_size, source.n_rows // unit * unit)
    if batch_size < 1:
        raise ConfigError(f"the held-out split has {source.n_rows} rows, fewer than the {unit} needed "
                          "to evaluate on this mesh; raise data.eval_fraction")
    slab = max(1, min(slab_rows, source.n_rows // max(n_proc, 1)))
    loader = ActivationLoader(source, batch_size, mesh, seed=0, num_epochs=1, slab_rows=slab,
                              shuffle_buffer_rows=slab)
    return loader, batch_size, max(1, min(loader.num_batches, max_rows // batch_size))


class HeldoutEval:
    """Evaluates a (possibly stacked, `sweep_size`) state on up to `max_rows` held-out rows."""

    def __init__(self, source: Any, sae_cfg: SAEConfig, mesh: Mesh, batch_size: int, max_rows: int,
                 slab_rows: int, state_shardings: Any, sweep_size: int | None = None):
        self.source, self.cfg, self.mesh = source, sae_cfg, mesh
        self.sweep_size = sweep_size
        self.loader, self.batch_size, self.n_batches = heldout_loader(source, mesh, batch_size, max_rows, slab_rows)
        fn = functools.partial(_batch_sums, cfg=sae_cfg, mesh=mesh)
        if sweep_size is not None:
            fn = jax.vmap(fn, in_axes=(0, None, 0))
        replicated = NamedSharding(mesh, spec())
        self._sums = jax.jit(fn, in_shardings=(state_shardings, NamedSharding(mesh, spec("batch", "d_in")), replicated),
                             out_shardings=replicated)
        self._sync = jax.default_backend() == "cpu" and mesh.size > 1

    def __call__(self, state: TrainState) -> list[dict[str, float]]:
        """One dict per member: loss, fvu, explained_variance, l0, dead_frac, dense_frac, eval_tokens."""
        n_members = self.sweep_size or 1
        totals: dict[str, np.ndarray] = {}
        shift = None
        n = 0
        with self.loader.__iter__() as it:
            for _ in range(self.n_batches):
                x = next(it)
                if shift is None:
                    mean = jax.jit(lambda b: jnp.mean(b.astype(jnp.float32), axis=0),
                                   out_shardings=NamedSharding(self.mesh, spec()))(x)
                    scales = functools.partial(column_scales, cfg=self.cfg)
                    shift = (jax.vmap(lambda s: mean * scales(s))(state.input_scale) if self.sweep_size
                             else mean * scales(state.input_scale))
                sums = self._sums(state, x, shift)
                if self._sync:
                    jax.block_until_ready(sums)
                add_sums(totals, jax.device_get(sums))
                n += self.batch_size
        results = []
        for i in range(n_members):
            member = {k: (v[i] if self.sweep_size else v) for k, v in totals.items()}
            metrics = metrics_from_sums(member, n)
            prefixes = {k: v for k, v in metrics.items() if k.startswith(("fvu_prefix_", "l0_prefix_"))}
            results.append({"loss": float(member["loss_sum"]) / n, **{k: metrics[k] for k in REPORTED},
                            **prefixes, "eval_tokens": n})
        return results
