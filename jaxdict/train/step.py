"""The pure train step `(state, batch) -> (state, metrics)`, jitted once with explicit shardings.

Static choices (configs, mesh) are bound with functools.partial; everything that varies per run
(λ, lr) lives in `state.hparams`, so a stack of runs shares one compiled step under vmap.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdict.sae import auxk
from jaxdict.sae.config import ConfigError, SAEConfig
from jaxdict.sae.losses import sae_loss_and_grads
from jaxdict.sae.params import SAEParams
from jaxdict.sae.transcoder import column_scales
from jaxdict.train import metrics as metric_defs
from jaxdict.train.mesh import batch_sharding, check_divisible
from jaxdict.train.optim import OptimConfig, lr_multiplier, make_transform, sparsity_multiplier
from jaxdict.train.state import TrainState, param_specs, to_shardings

# Counters saturate here so int32 never wraps (2^30 tokens ≫ the 10M-token dead window).
_COUNTER_CAP = 2**30


def remove_parallel_component(grad_dec: jax.Array, W_dec: jax.Array) -> jax.Array:
    """Project out the part of each decoder row's gradient along the (unit) row itself, so the
    Adam step does not fight the renormalisation (Gao et al. 2024 §A.3; Bricken et al. 2023)."""
    unit = W_dec / jnp.maximum(jnp.linalg.norm(W_dec, axis=-1, keepdims=True), 1e-12)
    return grad_dec - jnp.sum(grad_dec * unit, axis=-1, keepdims=True) * unit


def _sparsity_coeff(state: TrainState, sae_cfg: SAEConfig, optim_cfg: OptimConfig) -> jax.Array:
    """λ for this step: the run's coefficient times its warm-up multiplier."""
    # The L0-target penalty starts at its target (θ₀ from the data), so it needs no warm-up.
    uses_warmup = sae_cfg.arch == "relu_l1" or (sae_cfg.arch == "jumprelu" and sae_cfg.jumprelu_penalty != "l0_target")
    return state.hparams["sparsity_coeff"] * (
        sparsity_multiplier(state.step, optim_cfg) if uses_warmup else 1.0
    )


def _adjust_grads(grads: SAEParams, params: SAEParams, sae_cfg: SAEConfig, mesh: Mesh | None,
                  fsdp: bool) -> SAEParams:
    """The loss's gradients as the optimiser takes them: in the stored layout, with the part along
    each unit decoder row removed and no gradient for BatchTopK's EMA threshold."""
    if fsdp:
        # Back to the stored layout: the data-parallel gradient sum becomes a reduce-scatter.
        grads = jax.lax.with_sharding_constraint(grads, to_shardings(mesh, param_specs(sae_cfg, "fsdp")))
    if sae_cfg.unit_norm_decoder:
        grads = grads.replace(W_dec=remove_parallel_component(grads.W_dec, params.W_dec))
    if sae_cfg.arch == "batchtopk":
        # The inference threshold is an EMA statistic, not a trained parameter.
        grads = grads.replace(threshold=jnp.zeros_like(grads.threshold))
    return grads


def _constrain_params(new_params: SAEParams, batch_threshold: jax.Array | None, sae_cfg: SAEConfig) -> SAEParams:
    """After the optimiser update: renormalise decoder rows, move BatchTopK's threshold EMA, keep
    JumpReLU's θ positive."""
    if sae_cfg.unit_norm_decoder:
        norms = jnp.linalg.norm(new_params.W_dec, axis=-1, keepdims=True)
        new_params = new_params.replace(W_dec=new_params.W_dec / jnp.maximum(norms, 1e-12))
    if sae_cfg.arch == "batchtopk":
        decay = jnp.float32(sae_cfg.threshold_ema_decay)
        old = new_params.threshold
        # First batch seeds the EMA (θ = 0 means "not yet estimated"); a batch with no positive
        # kept activation (batch_threshold = inf) leaves it as it was.
        seen = jnp.isfinite(batch_threshold)
        ema = jnp.where(old > 0, decay * old + (1.0 - decay) * batch_threshold, batch_threshold)
        new_params = new_params.replace(threshold=jnp.where(seen, ema, old))
    if sae_cfg.arch == "jumprelu":
        # θ must stay positive: a non-positive threshold would let every negative z through H.
        new_params = new_params.replace(threshold=jnp.maximum(new_params.threshold, 1e-6))
    return new_params


def _update_params(state: TrainState, grads: SAEParams, lr: jax.Array, finite: jax.Array,
                   batch_threshold: jax.Array | None, sae_cfg: SAEConfig,
                   optim_cfg: OptimConfig) -> tuple[SAEParams, Any]:
    """The optimiser step, or no step at all where the loss or a gradient is non-finite."""
    tx = make_transform(optim_cfg)

    def apply_update(_):
        # optax's Adam bias correction computes b1 ** count (float ** int32), which strict dtype
        # promotion (our tests' setting) rejects; allow standard promotion inside optax only.
        with jax.numpy_dtype_promotion("standard"):
            updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: -lr * u, updates)
        if sae_cfg.arch == "jumprelu" and sae_cfg.jumprelu_penalty == "l0_target":
            updates = updates.replace(threshold=updates.threshold * jnp.float32(sae_cfg.jumprelu_threshold_lr_scale))
        new_params: SAEParams = optax.apply_updates(state.params, updates)
        return _constrain_params(new_params, batch_threshold, sae_cfg), new_opt_state

    def skip_update(_):
        return state.params, state.opt_state

    # A skipped (non-finite) step keeps params and optimiser state as they were. lax.cond rather
    # than a jnp.where over every leaf: the select was an extra pass over 3×(d·F·2) floats, ~20 %
    # of a ReLU-L1 step at d=640, F=16384 (under vmap it becomes that select again).
    return jax.lax.cond(finite, apply_update, skip_update, None)


def _advance_state(state: TrainState, new_params: SAEParams, new_opt_state: Any, fire_counts: jax.Array,
                   n_tokens: int, finite: jax.Array) -> TrainState:
    """The next state: new params, and the dead-latent and non-finite counters moved on."""
    n_tokens = jnp.int32(n_tokens)
    fired = fire_counts > 0
    since = jnp.where(fired, 0, jnp.minimum(state.tokens_since_fired + n_tokens, _COUNTER_CAP))
    return state.replace(
        step=state.step + 1,
        params=new_params,
        opt_state=new_opt_state,
        tokens_since_fired=jnp.where(finite, since, state.tokens_since_fired),
        n_nonfinite=state.n_nonfinite + jnp.where(finite, 0, 1).astype(jnp.int32),
        consecutive_nonfinite=jnp.where(finite, 0, state.consecutive_nonfinite + 1).astype(jnp.int32),
    )


def train_step(
    state: TrainState,
    batch: jax.Array,
    *,
    sae_cfg: SAEConfig,
    optim_cfg: OptimConfig,
    mesh: Mesh | None,
    shard: str = "model",
    aux_demand: jax.Array | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on a batch [B, d_in] of raw activations. `shard`: how the state is stored
    (jaxdict.train.mesh.SHARD_MODES); the loss always sees the parameters in the "model" layout.
    `aux_demand` sizes AuxK's buffer (default: auxk.buffer_demand of this state's dead latents; a
    sweep passes that of all its members)."""
    fsdp = shard == "fsdp" and mesh is not None
    params = state.params
    if fsdp:
        # FSDP: all-gather the stored 1/devices shards over `data` into the model-axis layout.
        params = jax.lax.with_sharding_constraint(params, to_shardings(mesh, param_specs(sae_cfg, "model")))
    x = batch.astype(jnp.float32) * column_scales(state.input_scale, sae_cfg)
    sparsity = _sparsity_coeff(state, sae_cfg, optim_cfg)
    dead = state.tokens_since_fired >= sae_cfg.dead_tokens

    (loss, (out, parts)), grads = sae_loss_and_grads(
        params, x, sae_cfg, mesh, sparsity_coeff=sparsity, dead=dead, step=state.step,
        aux_demand=aux_demand,
    )
    grads = _adjust_grads(grads, state.params, sae_cfg, mesh, fsdp)
    grad_norm = optax.tree.norm(grads)
    # ‖g‖ is non-finite iff some gradient is (or their squares overflow, also worth skipping):
    # one reduction instead of a pass over every gradient.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    lr = state.hparams["lr"] * lr_multiplier(state.step, optim_cfg)
    new_params, new_opt_state = _update_params(state, grads, lr, finite, out.batch_threshold, sae_cfg, optim_cfg)
    new_state = _advance_state(state, new_params, new_opt_state, out.fire_counts, batch.shape[0], finite)

    step_metrics = metric_defs.step_metrics(x, out, parts, loss, new_state.tokens_since_fired, sae_cfg)
    step_metrics.update(
        grad_norm=grad_norm,
        lr=lr,
        sparsity_coeff=jnp.asarray(sparsity, jnp.float32),
        nonfinite=jnp.where(finite, 0.0, 1.0).astype(jnp.float32),
        n_nonfinite=new_state.n_nonfinite,
        consecutive_nonfinite=new_state.consecutive_nonfinite,
    )
    if out.decode_fallback is not None:
        step_metrics["decode_fallback"] = out.decode_fallback
    return new_state, step_metrics


def _sweep_step(fn: Callable, sae_cfg: SAEConfig, mesh: Mesh) -> Callable:
    """`fn` over a stack of states under vmap. AuxK's buffer size is chosen by a lax.switch on the
    dead latents' demand; under vmap a switch on a per-member value becomes a select that runs
    every branch. The demand of all members together is computed outside vmap and passed in
    unbatched, so the switch stays a switch: with nothing dead in any member the sweep skips AuxK."""
    stepped = jax.vmap(lambda state, batch, n: fn(state, batch, aux_demand=n), in_axes=(0, None, None))

    def sweep(states: TrainState, batch: jax.Array):
        dead = states.tokens_since_fired >= sae_cfg.dead_tokens
        return stepped(states, batch, auxk.buffer_demand(dead, mesh))

    return sweep


class TrainStep:
    """The jitted step for a fixed (configs, mesh, batch size), checking inputs before it compiles.

    `sweep_size=N` trains N stacked states (leading axis) on the same batch under vmap; `shard` is
    the layout `state_shardings` store the state in (jaxdict.train.mesh.SHARD_MODES).
    `metrics=False` returns no metrics (the benchmark of what computing them costs).
    """

    def __init__(
        self,
        sae_cfg: SAEConfig,
        optim_cfg: OptimConfig,
        mesh: Mesh,
        state_shardings: TrainState,
        batch_size: int,
        sweep_size: int | None = None,
        shard: str = "model",
        metrics: bool = True,
    ):
        check_divisible(mesh, batch_size=batch_size, n_features=sae_cfg.n_features, shard=shard)
        self.sae_cfg, self.optim_cfg, self.mesh = sae_cfg, optim_cfg, mesh
        self.batch_size, self.sweep_size, self.shard = batch_size, sweep_size, shard
        fn: Callable = functools.partial(train_step, sae_cfg=sae_cfg, optim_cfg=optim_cfg, mesh=mesh, shard=shard)
        if sweep_size is not None:
            fn = _sweep_step(fn, sae_cfg, mesh)
        if not metrics:
            # For measuring what the metrics cost: XLA drops the work only they use.
            with_metrics = fn
            fn = lambda state, batch: (with_metrics(state, batch)[0], {})  # noqa: E731
        self.batch_sharding = batch_sharding(mesh)
        # XLA:CPU runs the collectives of several in-flight steps on one shared thread pool; with
        # many (fake) CPU devices on few cores, an un-synchronised next step can take the threads
        # that the previous step's rendezvous needs and deadlock (seen with jax 0.10.2 on 2 cores,
        # 8 fake devices). Accelerators keep asynchronous dispatch.
        self.sync_each_step = jax.default_backend() == "cpu" and mesh.size > 1
        self._jitted = jax.jit(
            fn,
            in_shardings=(state_shardings, self.batch_sharding),
            out_shardings=(state_shardings, NamedSharding(mesh, P())),
            donate_argnums=(0,),
        )

    def check_batch(self, batch: Any) -> None:
        shape = tuple(batch.shape)
        want = (self.batch_size, self.sae_cfg.batch_width)
        if shape != want:
            if len(shape) == 2 and self.sae_cfg.is_transcoder and shape[1] != want[1]:
                raise ConfigError(
                    f"batch has width {shape[1]} but the transcoder takes rows [x | y] of d_in + d_out = "
                    f"{self.sae_cfg.d_in} + {self.sae_cfg.d_out} = {want[1]}; pair stores of those widths "
                    "(data.store and data.target_store)")
            if len(shape) == 2 and shape[1] != self.sae_cfg.d_in:
                raise ConfigError(
                    f"batch has input width {shape[1]} but the SAE's d_in is {self.sae_cfg.d_in}; "
                    "harvest the matching hook or set sae.d_in to the store's width"
                )
            raise ConfigError(f"batch shape {shape}; the compiled step expects {want} ([batch, d_in])")

    def __call__(self, state: TrainState, batch: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        self.check_batch(batch)
        out = self._jitted(state, batch)
        if self.sync_each_step:
            jax.block_until_ready(out)
        return out

    def lower(self, state: TrainState, batch: jax.Array):
        return self._jitted.lower(state, batch)
