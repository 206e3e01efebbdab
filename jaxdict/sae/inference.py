"""`SAE`: a loaded sparse autoencoder for evaluation, acting on raw (unnormalised) activations.

Training works on x · input_scale; here the scale is already folded into the parameters
(`fold_input_scale`), so `encode` takes activations exactly as the language model produces them.
BatchTopK runs as a JumpReLU with its learned threshold (inference mode, `train=False`).
A transcoder (cfg.d_out set) encodes its input hook and decodes to its target hook: `decode(f, x)`
adds a skip transcoder's x W_skip, so it needs the input x as well as the latents.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import Array, Float

from jaxdict.sae.axes import MODEL
from jaxdict.sae.config import SAEConfig
from jaxdict.sae.forward import ForwardOutput, dense_decode, dense_latents, forward, skip_term
from jaxdict.sae.params import SAEParams


@functools.partial(jax.jit, static_argnames=("cfg",))
def _forward_flat(params: SAEParams, x: Float[Array, "B d"], cfg: SAEConfig) -> ForwardOutput:
    return forward(params, x.astype(jnp.float32), cfg, None, train=False)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _encode_flat(params: SAEParams, x: Float[Array, "B d"], cfg: SAEConfig) -> Float[Array, "B F"]:
    out = forward(params, x.astype(jnp.float32), cfg, None, train=False)
    return dense_latents(out, cfg.n_features)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _decode_flat(params: SAEParams, f: Float[Array, "B F"], cfg: SAEConfig,
                 x: Float[Array, "B d_in"] | None = None) -> Float[Array, "B d"]:
    return decode_with_skip(params, f.astype(jnp.float32), cfg, x)


def decode_with_skip(params: SAEParams, f: Float[Array, "B F"], cfg: SAEConfig,
                     x: Float[Array, "B d_in"] | None) -> Float[Array, "B d_out"]:
    """f W_dec + b_dec, plus x W_skip for a skip transcoder (which then needs its input x)."""
    x_hat = dense_decode(params, f, cfg)
    if params.W_skip is None:
        return x_hat
    if x is None:
        raise ValueError("a skip transcoder's reconstruction is W_dec f + b_dec + W_skip x: pass its input x "
                         f"([..., {cfg.d_in}]) to decode")
    return x_hat + skip_term(params, x.astype(jnp.float32), cfg)


def encode_raw(params: SAEParams, x: Float[Array, "... d"], cfg: SAEConfig) -> Float[Array, "... F"]:
    """Dense latents of raw activations of any leading shape (traceable; used inside LM edits)."""
    lead = x.shape[:-1]
    out = forward(params, x.reshape(-1, x.shape[-1]).astype(jnp.float32), cfg, None, train=False)
    return dense_latents(out, cfg.n_features).reshape(*lead, cfg.n_features)


def decode_raw(params: SAEParams, f: Float[Array, "... F"], cfg: SAEConfig,
               x: Float[Array, "... d_in"] | None = None) -> Float[Array, "... d"]:
    """Reconstruction in raw units from dense latents of any leading shape (traceable); `x`: a skip
    transcoder's input, for its W_skip term."""
    lead = f.shape[:-1]
    x_flat = None if x is None else x.reshape(-1, x.shape[-1])
    x_hat = decode_with_skip(params, f.reshape(-1, f.shape[-1]).astype(jnp.float32), cfg, x_flat)
    return x_hat.reshape(*lead, x_hat.shape[-1])


@dataclasses.dataclass(frozen=True, eq=False)
class SAE:
    """A sparse autoencoder ready for evaluation.

    cfg: its SAEConfig. params: SAEParams in raw activation units (normalisation folded in).
    model / hook: what it was trained on (e.g. "gemma3-270m", "resid_post.9"), None if unknown; for
    a transcoder `hook` is its input (e.g. "mlp_in.9") and `target_hook` what it predicts ("mlp_out.9").
    max_activations: float32 [F], each feature's largest activation on a corpus sample (written
    by `jaxdict features`), None until known. source / step: where it was loaded from.
    """

    cfg: SAEConfig
    params: SAEParams
    model: str | None = None
    hook: str | None = None
    max_activations: np.ndarray | None = None
    source: str = ""
    step: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    target_hook: str | None = None

    @property
    def output_hook(self) -> str | None:
        """The hook the reconstruction replaces: the SAE's own, a transcoder's target."""
        return self.target_hook if self.cfg.is_transcoder else self.hook

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def n_features(self) -> int:
        return self.cfg.n_features

    @property
    def d_out(self) -> int:
        """Width of the reconstruction: d_in for an SAE, the target hook's for a transcoder."""
        return self.cfg.output_width

    def _check_width(self, a: Any, width: int, what: str) -> jax.Array:
        a = jnp.asarray(a)
        if a.ndim < 1 or a.shape[-1] != width:
            raise ValueError(f"{what} must have a last axis of {width}, got shape {tuple(a.shape)}")
        return a

    def encode(self, x: Float[Array, "... d"]) -> Float[Array, "... F"]:
        """Dense latent activations f [..., F] of raw activations x [..., d_in]."""
        x = self._check_width(x, self.d_in, "x (activations)")
        lead = x.shape[:-1]
        f = _encode_flat(self.params, x.reshape(-1, self.d_in), self.cfg)
        return f.reshape(*lead, self.n_features)

    def decode(self, f: Float[Array, "... F"], x: Float[Array, "... d"] | None = None) -> Float[Array, "... d"]:
        """Reconstruction [..., d_out] in raw units from latents f [..., F] (d_out = d_in for an SAE).
        A skip transcoder also needs its input x [..., d_in] for the W_skip term."""
        f = self._check_width(f, self.n_features, "f (latents)")
        lead = f.shape[:-1]
        x_flat = None if x is None else self._check_width(x, self.d_in, "x (activations)").reshape(-1, self.d_in)
        x_hat = _decode_flat(self.params, f.reshape(-1, self.n_features), self.cfg, x_flat)
        return x_hat.reshape(*lead, self.d_out)

    def forward(self, x: Float[Array, "B d"]) -> ForwardOutput:
        """The full ForwardOutput (x_hat, pre_acts, latents, l0, ...) for a batch x [B, d_in]."""
        x = self._check_width(x, self.d_in, "x (activations)")
        if x.ndim != 2:
            raise ValueError(f"forward takes a batch [B, {self.d_in}], got shape {tuple(x.shape)}")
        return _forward_flat(self.params, x, self.cfg)

    def reconstruct(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        """x̂ [..., d_out] of x [..., d_in]: the SAE's reconstruction, or a transcoder's prediction of
        its target hook."""
        x = self._check_width(x, self.d_in, "x (activations)")
        lead = x.shape[:-1]
        return self.forward(x.reshape(-1, self.d_in)).x_hat.reshape(*lead, self.d_out)

    def check_feature(self, index: int) -> int:
        """The feature index as int, or a ValueError naming the valid range."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not (
                0 <= int(index) < self.n_features):
            raise ValueError(f"feature index {index!r} out of range; valid: 0..{self.n_features - 1}")
        return int(index)

    def check_compatible(self, model: str | None, hook: str | None, what: str) -> None:
        """Refuse a store or LM whose model or hook differs from the one the SAE was trained on."""
        for name, mine, theirs in (("model", self.model, model), ("hook", self.hook, hook)):
            if mine is not None and theirs is not None and mine != theirs:
                raise ValueError(
                    f"SAE {self.source or ''} was trained on {name} {mine!r}, but {what} has "
                    f"{name} {theirs!r}; use a {what} of {name} {mine!r}")

    def with_max_activations(self, max_activations: Any) -> "SAE":
        arr = np.asarray(max_activations, np.float32)
        if arr.shape != (self.n_features,):
            raise ValueError(f"max_activations must have shape ({self.n_features},), got {arr.shape}")
        return dataclasses.replace(self, max_activations=arr)

    def shard(self, mesh: Mesh) -> "SAE":
        """Place the parameters on `mesh`, features split over its `model` axis (if it has one)."""
        feat = MODEL if MODEL in mesh.axis_names else None
        specs = SAEParams(W_enc=P(None, feat), b_enc=P(feat), W_dec=P(feat, None), b_dec=P(),
                          threshold=None if self.params.threshold is None else P(feat),
                          W_skip=None if self.params.W_skip is None else P())
        placed = jax.tree.map(lambda a, s: jax.device_put(a, NamedSharding(mesh, s)), self.params, specs)
        return dataclasses.replace(self, params=placed)

    def __repr__(self) -> str:
        return (f"SAE(arch={self.cfg.arch!r}, d_in={self.d_in}, n_features={self.n_features}, "
                f"model={self.model!r}, hook={self.hook!r}, source={self.source!r}, step={self.step})")
