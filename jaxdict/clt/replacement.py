"""The CLT replacement model: Gemma 3 with every MLP replaced by a cross-layer transcoder's
reconstruction (Ameisen et al. 2025, "Circuit Tracing", §"Building an Interpretable Replacement
Model"), the LM run block by block with a carry.

Why a block loop and not jaxdict.lm.model.forward's edits: an edit there sees one block's hook
values (`fn.reads`), but the CLT's output at mlp_out.l' sums features of every layer l ≤ l', each
read at its own resid_mid.l. So this loop keeps the decoded contributions waiting for later layers:

    at resid_mid.l (the replaced model's own stream): a_l = σ(x_l W_enc[l] + b_enc[l]),
        pending[l'] += a_l W_dec[l][:, l' − l] for every l' ≥ l
    at mlp_out.l':  ŷ_l' = pending[l'] + b_dec[l'] (+ the clean pass's error y_l' − ŷ_l', if given)

Errors propagate: layer l's features read the residual stream that the replaced MLPs of layers < l
wrote. With the clean pass's error terms the edited MLP outputs equal the clean ones, so the whole
forward pass equals the clean model's up to float error (the plumbing check).

Positions: as jaxdict.evaluate.spliced, only `where` (real tokens except BOS) is replaced; BOS and
padding keep the MLP's own output. The LM blocks and norms are jaxdict.lm.model's, unchanged.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxdict.clt.config import CLTConfig
from jaxdict.clt.params import CLTParams
from jaxdict.lm import model
from jaxdict.lm.config import FULL, Gemma3Config

MODES = ("clean", "replace", "zero")


def encode_layer(params: CLTParams, x: jax.Array, layer: int, cfg: CLTConfig) -> jax.Array:
    """Layer `layer`'s features [..., F] of resid_mid rows x [..., d] (float32), in inference form as
    jaxdict.clt.forward.forward(train=False): JumpReLU and BatchTopK (at its EMA threshold) keep
    z > θ; TopK keeps each token's k largest z, rectified."""
    z = x.astype(jnp.float32) @ params.W_enc[layer] + params.b_enc[layer]
    if cfg.arch == "topk":
        kth = jax.lax.top_k(z, cfg.k)[0][..., -1:]
        return jax.nn.relu(z) * (z >= kth).astype(z.dtype)
    return z * (z > params.threshold[layer]).astype(z.dtype)


def decode_layer(params: CLTParams, a: jax.Array, layer: int) -> jax.Array:
    """[..., span, d]: the features a [..., F] of `layer` written to mlp_out.layer … mlp_out.(layer + span − 1)."""
    return jnp.einsum("...f,fmd->...md", a, params.W_dec[layer])


def reconstruct(params: CLTParams, resid_mid: jax.Array, cfg: CLTConfig) -> jax.Array:
    """ŷ [L, ..., d] of mlp_out from resid_mid [L, ..., d] (the stacked form, for the error terms)."""
    L = cfg.n_layers
    out = [jnp.zeros(resid_mid.shape[1:], jnp.float32) for _ in range(L)]
    for layer in range(L):  # the order of run_replaced's sums, so that its error terms cancel exactly
        part = decode_layer(params, encode_layer(params, resid_mid[layer], layer, cfg), layer)
        for m in range(part.shape[-2]):
            out[layer + m] = out[layer + m] + part[..., m, :]
    return jnp.stack([out[l] + params.b_dec[l] for l in range(L)])


def _tap_for(layer, mode, clt, cfg, where, errors, pending, record):
    """The hook function of one block: records resid_mid / mlp_out, and in `replace` mode encodes at
    resid_mid into `pending` (the carry) and replaces mlp_out where `where`."""

    def tap(kind, value):
        if kind == "resid_mid":
            record["resid_mid"].append(value)
            if mode == "replace":
                part = decode_layer(clt, encode_layer(clt, value, layer, cfg), layer)
                for m in range(part.shape[-2]):
                    pending[layer + m] = pending[layer + m] + part[..., m, :]
        elif kind == "mlp_out":
            if mode == "replace":
                y_hat = pending[layer] + clt.b_dec[layer]
                if errors is not None:
                    y_hat = y_hat + errors[layer]
                value = jnp.where(where[..., None], y_hat.astype(value.dtype), value)
            elif mode == "zero":
                value = jnp.where(where[..., None], jnp.zeros_like(value), value)
            record["mlp_out"].append(value)
        return value

    return tap


@functools.partial(jax.jit, static_argnames=("config", "cfg", "mode"))
def run_replaced(lm_params, clt: CLTParams, ids, mask, where, errors, *, config: Gemma3Config, cfg: CLTConfig,
                 mode: str):
    """(logits [B, S, V] float32, resid_mid [L, B, S, d], mlp_out [L, B, S, d] after any edit).

    mode "clean": the LM as is; "replace": every MLP output replaced by the CLT's reconstruction
    where `where` [B, S], plus `errors` [L, B, S, d] if not None; "zero": every MLP output zeroed
    where `where` (ce_recovered's baseline)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}; valid: {', '.join(MODES)}")
    if cfg.n_layers != config.n_layers:
        raise ValueError(f"the CLT has {cfg.n_layers} layers but the language model {config.n_layers}")
    B, S = ids.shape
    q_pos = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32)[None, :], (B, S))
    pending = [jnp.zeros((B, S, cfg.d_model), jnp.float32) for _ in range(cfg.n_layers)]
    record = {"resid_mid": [], "mlp_out": []}
    x = model.embed(lm_params, ids, config)
    for layer in range(config.n_layers):
        tap = _tap_for(layer, mode, clt, cfg, where, errors, pending, record)
        x, _ = model.block(lm_params["layers"][layer], x, q_pos, config, config.layer_types[layer] == FULL,
                           None, q_pos, mask, None, tap)
    logits = model.unembed(lm_params, x, config)
    return logits, jnp.stack(record["resid_mid"]), jnp.stack(record["mlp_out"])


@functools.partial(jax.jit, static_argnames=("cfg",))
def clean_errors(clt: CLTParams, resid_mid, mlp_out, *, cfg: CLTConfig):
    """The clean pass's error terms y_l' − ŷ_l' [L, B, S, d] (float32)."""
    return mlp_out.astype(jnp.float32) - reconstruct(clt, resid_mid.astype(jnp.float32), cfg)
