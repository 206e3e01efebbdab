"""Optimiser and schedules: Adam from optax, clipping, the Anthropic April-2024 schedules."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax

from jaxdict.sae.config import ConfigError, check_finite_fields


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Adam and its schedules.

    lr decays linearly to 0 over the last `lr_decay_frac` of training (20 % in Anthropic's April
    2024 update); the sparsity coefficient warms up linearly over the first `sparsity_warmup_frac`
    (5 %, same source); `lr_warmup_steps` adds an optional linear lr warm-up.
    """

    lr: float = 2e-4
    total_steps: int = 1000
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clip; 0 disables
    lr_warmup_steps: int = 0
    lr_decay_frac: float = 0.2
    sparsity_warmup_frac: float = 0.05

    def __post_init__(self) -> None:
        check_finite_fields(self)
        if self.lr <= 0:
            raise ConfigError(f"OptimConfig.lr = {self.lr}; must be > 0")
        if self.total_steps < 1:
            raise ConfigError(f"OptimConfig.total_steps = {self.total_steps}; must be >= 1")
        if self.grad_clip < 0:
            raise ConfigError(f"OptimConfig.grad_clip = {self.grad_clip}; must be >= 0 (0 disables)")
        for name in ("lr_decay_frac", "sparsity_warmup_frac"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"OptimConfig.{name} = {v}; must lie in [0, 1]")
        if not (0 <= self.adam_b1 < 1 and 0 <= self.adam_b2 < 1):
            raise ConfigError(f"Adam betas ({self.adam_b1}, {self.adam_b2}) must lie in [0, 1)")


def make_transform(cfg: OptimConfig) -> optax.GradientTransformation:
    """Clip then Adam's scaling; the (per-run, traced) learning rate is applied by the step."""
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(optax.scale_by_adam(b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps))
    return optax.chain(*parts)


def lr_multiplier(step, cfg: OptimConfig):
    """1 in the middle of training; linear warm-up at the start, linear decay to 0 at the end."""
    step = jnp.asarray(step, jnp.float32)
    total = jnp.float32(cfg.total_steps)
    warm = jnp.minimum(1.0, (step + 1.0) / jnp.float32(max(cfg.lr_warmup_steps, 1)))
    decay_steps = jnp.float32(max(cfg.lr_decay_frac * cfg.total_steps, 1e-9))
    decay_start = total - decay_steps
    decay = jnp.clip((total - step) / decay_steps, 0.0, 1.0)
    return warm * jnp.where(step >= decay_start, decay, 1.0)


def sparsity_multiplier(step, cfg: OptimConfig):
    """Linear warm-up of λ from 0 over the first `sparsity_warmup_frac` of the steps."""
    warm_steps = cfg.sparsity_warmup_frac * cfg.total_steps
    if warm_steps <= 0:
        return jnp.float32(1.0)
    return jnp.minimum(1.0, (jnp.asarray(step, jnp.float32) + 1.0) / jnp.float32(warm_steps))
