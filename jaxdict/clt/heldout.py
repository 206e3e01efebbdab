"""Held-out evaluation of a CLT during training (the CLT counterpart of jaxdict/train/heldout.py):
per output layer fvu of mlp_out.l' and per source layer L0, in inference form (BatchTopK at its
EMA threshold), plus the training loss. fvu_l' = Σ‖y − ŷ‖² / Σ‖y − μ‖² with μ the mean over every
evaluated row (sums taken about the first batch's mean, so the subtraction does not cancel); it is
the same in trained and raw units, since a layer's scale multiplies both.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdict.clt.config import CLTConfig
from jaxdict.clt.forward import forward
from jaxdict.clt.step import split_rows
from jaxdict.clt.train_state import CLTTrainState
from jaxdict.clt.train_step import _loss_with, row_scales
from jaxdict.sae.axes import DATA
from jaxdict.sae.metric_sums import add_sums
from jaxdict.train.heldout import heldout_loader


def _batch_sums(state: CLTTrainState, batch: jax.Array, shift: jax.Array, *, cfg: CLTConfig, mesh: Mesh):
    rows = batch.astype(jnp.float32) * row_scales(state.input_scale, cfg.d_model)
    x, y = split_rows(rows, cfg)
    out = forward(state.params, x, cfg, mesh, train=False)
    centred = y - shift[None]
    loss, _ = _loss_with(state.params, x, y, state.hparams["sparsity_coeff"], cfg, mesh)
    return {"res_sq": jnp.sum(jnp.square(y - out.y_hat), axis=(0, 2)), "y_sum": jnp.sum(centred, axis=0),
            "y_sq": jnp.sum(jnp.square(centred), axis=(0, 2)), "l0_sum": out.l0 * jnp.float32(x.shape[0]),
            "loss_sum": loss * jnp.float32(x.shape[0])}


class CLTHeldoutEval:
    """Evaluates a (possibly stacked, `sweep_size`) CLT state on up to `max_rows` held-out rows."""

    def __init__(self, source: Any, cfg: CLTConfig, mesh: Mesh, batch_size: int, max_rows: int, slab_rows: int,
                 state_shardings: Any, sweep_size: int | None = None):
        self.cfg, self.mesh, self.sweep_size = cfg, mesh, sweep_size
        self.loader, self.batch_size, self.n_batches = heldout_loader(source, mesh, batch_size, max_rows, slab_rows)
        fn = functools.partial(_batch_sums, cfg=cfg, mesh=mesh)
        if sweep_size is not None:
            fn = jax.vmap(fn, in_axes=(0, None, 0))
        replicated = NamedSharding(mesh, P())
        self._sums = jax.jit(fn, in_shardings=(state_shardings, NamedSharding(mesh, P(DATA, None)), replicated),
                             out_shardings=replicated)
        self._sync = jax.default_backend() == "cpu" and mesh.size > 1

    def _shift(self, state: CLTTrainState, batch: jax.Array) -> jax.Array:
        """The first batch's mean of the scaled targets [L, d] (per member)."""
        L, d = self.cfg.n_layers, self.cfg.d_model
        mean = jax.jit(lambda b: jnp.mean(b.astype(jnp.float32), axis=0).reshape(2, L, d)[1],
                       out_shardings=NamedSharding(self.mesh, P()))(batch)
        scale = lambda s: mean * s[1][:, None]  # noqa: E731
        return jax.vmap(scale)(state.input_scale) if self.sweep_size else scale(state.input_scale)

    def __call__(self, state: CLTTrainState) -> list[dict[str, float]]:
        totals: dict[str, np.ndarray] = {}
        shift, n = None, 0
        with self.loader.__iter__() as it:
            for _ in range(self.n_batches):
                batch = next(it)
                shift = self._shift(state, batch) if shift is None else shift
                sums = self._sums(state, batch, shift)
                if self._sync:
                    jax.block_until_ready(sums)
                add_sums(totals, jax.device_get(sums))
                n += self.batch_size
        results = []
        for i in range(self.sweep_size or 1):
            t = {k: (v[i] if self.sweep_size else v) for k, v in totals.items()}
            variance = t["y_sq"] - np.sum(np.square(t["y_sum"]), axis=-1) / n
            fvu = t["res_sq"] / np.maximum(variance, 1e-30)
            l0 = t["l0_sum"] / n
            member = {"loss": float(t["loss_sum"]) / n, "fvu": float(np.mean(fvu)),
                      "explained_variance": float(1 - np.mean(fvu)), "l0": float(np.mean(l0)), "eval_tokens": n}
            member.update({f"fvu_{layer}": float(v) for layer, v in enumerate(fvu)})
            member.update({f"l0_{layer}": float(v) for layer, v in enumerate(l0)})
            results.append(member)
        return results
