"""Periodic evaluation on the held-out split during training (DESIGN.md §4 metric names).

fvu uses μ, the mean over every evaluated row (not per batch): the device returns sums per batch
(shifted by the first batch's mean to avoid cancellation in Σ‖x‖² − n‖μ‖²) and the host adds them
in float64. dead_frac here is the fraction of latents that never fired on the evaluated rows.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdict.data import ActivationLoader
from jaxdict.sae.config import ConfigError, SAEConfig
from jaxdict.sae.forward import forward
from jaxdict.sae.losses import sae_loss
from jaxdict.train.metrics import DENSE_FIRING_RATE
from jaxdict.train.state import TrainState


def _batch_sums(state: TrainState, x: jax.Array, shift: jax.Array, *, cfg: SAEConfig, mesh: Mesh):
    xs = x.astype(jnp.float32) * state.input_scale
    out = forward(state.params, xs, cfg, mesh, train=False)
    no_dead = jnp.zeros((cfg.n_features,), bool)
    loss, _ = sae_loss(state.params, xs, cfg, mesh, sparsity_coeff=state.hparams["sparsity_coeff"], dead=no_dead)
    centred = xs - shift[None, :]
    return {
        "sq_err": jnp.sum(jnp.square(xs - out.x_hat)),
        "x_sum": jnp.sum(centred, axis=0),
        "x_sq": jnp.sum(jnp.square(centred)),
        "l0_sum": jnp.sum(out.l0),
        "fire_counts": out.fire_counts,
        "loss_sum": loss * jnp.float32(x.shape[0]),
    }


class HeldoutEval:
    """Evaluates a (possibly stacked, `sweep_size`) state on up to `max_rows` held-out rows."""

    def __init__(self, source: Any, sae_cfg: SAEConfig, mesh: Mesh, batch_size: int, max_rows: int,
                 slab_rows: int, state_shardings: Any, sweep_size: int | None = None):
        self.source, self.cfg, self.mesh = source, sae_cfg, mesh
        self.sweep_size = sweep_size
        n_proc = jax.process_count()
        # A held-out split smaller than a training batch is evaluated in one smaller batch (a
        # multiple of the data axis and of the process count, as the loader needs).
        unit = math.lcm(mesh.shape["data"], n_proc)
        batch_size = min(batch_size, source.n_rows // unit * unit)
        if batch_size < 1:
            raise ConfigError(f"the held-out split has {source.n_rows} rows, fewer than the {unit} needed "
                              "to evaluate on this mesh; raise data.eval_fraction")
        self.batch_size = batch_size
        # Small eval splits: shrink slabs so each process still gets at least one.
        slab = max(1, min(slab_rows, source.n_rows // max(n_proc, 1)))
        self.loader = ActivationLoader(source, batch_size, mesh, seed=0, num_epochs=1, slab_rows=slab,
                                       shuffle_buffer_rows=slab)
        self.n_batches = max(1, min(self.loader.num_batches, max_rows // batch_size))
        fn = functools.partial(_batch_sums, cfg=sae_cfg, mesh=mesh)
        if sweep_size is not None:
            fn = jax.vmap(fn, in_axes=(0, None, 0))
        shift_sharding = NamedSharding(mesh, P())
        self._sums = jax.jit(fn, in_shardings=(state_shardings, NamedSharding(mesh, P("data", None)), shift_sharding),
                             out_shardings=NamedSharding(mesh, P()))
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
                                   out_shardings=NamedSharding(self.mesh, P()))(x)
                    shift = mean[None] * state.input_scale[:, None] if self.sweep_size else mean * state.input_scale
                sums = self._sums(state, x, shift)
                if self._sync:
                    jax.block_until_ready(sums)
                host = jax.device_get(sums)
                for k, v in host.items():
                    totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64)
                n += self.batch_size
        results = []
        for i in range(n_members):
            t = {k: (v[i] if self.sweep_size else v) for k, v in totals.items()}
            x_sum = np.asarray(t["x_sum"])
            total_var = float(t["x_sq"]) - float(x_sum @ x_sum) / n
            fvu = float(t["sq_err"]) / total_var if total_var > 0 else math.nan
            counts = np.asarray(t["fire_counts"])
            results.append({
                "loss": float(t["loss_sum"]) / n,
                "fvu": fvu,
                "explained_variance": 1.0 - fvu,
                "l0": float(t["l0_sum"]) / n,
                "dead_frac": float(np.mean(counts == 0)),
                "dense_frac": float(np.mean(counts / n > DENSE_FIRING_RATE)),
                "eval_tokens": n,
            })
        return results
