"""The Gemma 3 text transformer as pure JAX functions of a params pytree.

Param layout per layer (einsum-friendly, `(in, ..., out)`): q [d, H, hd], k/v [d, K, hd],
o [H, hd, d], gate/up [d, F], down [F, d]; every norm weight is the full multiplier (1 + w).
Block (Gemma 3 report; llama.cpp `llm_build_gemma3`): pre-norm -> attention (per-head RMSNorm on
q and k, rotate-half RoPE, GQA) -> post-attention norm -> residual add; pre-norm -> GeGLU
(gelu_tanh(gate) * up -> down) -> post-FFN norm -> residual add. The hook points inside a block
and where they sit relative to its four norms: jaxdict.lm.hooks.

The functions are pure and unjitted; jaxdict.lm.language_model jits them with the static choices.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from jaxdict.lm.config import FULL, Gemma3Config
from jaxdict.lm.hooks import HOOK_KINDS, HookPoint

Array = jax.Array
EditFn = Callable[[Array, Any], Array]
TapFn = Callable[[str, Array], Array]
# Large finite negative instead of -inf so that a fully masked row (an all-padding sequence)
# gives a uniform softmax rather than NaN.
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)


def rms_norm(x: Array, weight: Array, eps: float) -> Array:
    """x / rms(x) * weight over the last axis, computed in float32."""
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    return (x32 * jax.lax.rsqrt(var + jnp.float32(eps)) * weight.astype(jnp.float32)).astype(x.dtype)


def apply_rope(x: Array, positions: Array, base: float, scale: float) -> Array:
    """Rotate-half RoPE (dimension i paired with i + hd/2). x [B, S, N, hd], positions [B, S]."""
    hd = x.shape[-1]
    half = hd // 2
    inv_freq = jnp.float32(base) ** (-jnp.arange(0, half, dtype=jnp.float32) * jnp.float32(2.0 / hd))
    angles = (positions.astype(jnp.float32) / jnp.float32(scale))[..., None] * inv_freq  # [B,S,half]
    cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)
    sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attention_allowed(q_pos: Array, k_pos: Array, k_valid: Array, window: int | None) -> Array:
    """bool [B, Sq, Sk]: key j visible from query i (causal, valid key, within the window).

    A key more than `window - 1` positions back is masked (llama.cpp: masked when
    q_pos - k_pos >= n_swa).
    """
    diff = q_pos[:, :, None] - k_pos[:, None, :]
    allowed = (diff >= 0) & k_valid[:, None, :]
    if window is not None:
        allowed = allowed & (diff < window)
    return allowed


def attention(layer: dict[str, Array], x: Array, q_pos: Array, config: Gemma3Config,
              is_global: bool, kv: tuple[Array, Array] | None, k_pos: Array, k_valid: Array,
              cache_index: Array | None) -> tuple[Array, tuple[Array, Array]]:
    """Self-attention of x [B, S, d]. With `kv` (a cache [B, T, K, hd] pair), the new keys and
    values are written at `cache_index` and attention runs over the whole cache."""
    c = config
    q = jnp.einsum("bsd,dnh->bsnh", x, layer["q"])
    k = jnp.einsum("bsd,dkh->bskh", x, layer["k"])
    v = jnp.einsum("bsd,dkh->bskh", x, layer["v"])
    q = rms_norm(q, layer["q_norm"], c.rms_norm_eps)
    k = rms_norm(k, layer["k_norm"], c.rms_norm_eps)
    base = c.global_rope_base if is_global else c.local_rope_base
    scale = c.global_rope_scale if is_global else 1.0
    q = apply_rope(q, q_pos, base, scale)
    k = apply_rope(k, q_pos, base, scale)
    if kv is not None:
        k_cache = jax.lax.dynamic_update_slice_in_dim(kv[0], k.astype(kv[0].dtype), cache_index, 1)
        v_cache = jax.lax.dynamic_update_slice_in_dim(kv[1], v.astype(kv[1].dtype), cache_index, 1)
        k, v = k_cache, v_cache
        kv = (k_cache, v_cache)
    else:
        kv = (k, v)
    B, S = x.shape[:2]
    G = c.n_heads // c.n_kv_heads
    q = q.reshape(B, S, c.n_kv_heads, G, c.head_dim) * jnp.asarray(
        c.query_pre_attn_scalar ** -0.5, dtype=q.dtype)
    scores = jnp.einsum("bqkgh,bskh->bkgqs", q, k).astype(jnp.float32)
    allowed = attention_allowed(q_pos, k_pos, k_valid, None if is_global else c.sliding_window)
    scores = jnp.where(allowed[:, None, None, :, :], scores, jnp.float32(_MASKED))
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgqs,bskh->bqkgh", probs, v).reshape(B, S, c.n_heads, c.head_dim)
    return jnp.einsum("bsnh,nhd->bsd", out, layer["o"]), kv


def block(layer: dict[str, Array], x: Array, q_pos: Array, config: Gemma3Config, is_global: bool,
          kv: tuple[Array, Array] | None, k_pos: Array, k_valid: Array,
          cache_index: Array | None = None, tap: TapFn | None = None) -> tuple[Array, tuple[Array, Array]]:
    """One block. `tap(kind, value)` sees (and may replace) each hook point of jaxdict.lm.hooks."""
    tap = tap or _no_tap
    eps = config.rms_norm_eps
    x = tap("resid_pre", x)
    h, kv = attention(layer, rms_norm(x, layer["attn_norm"], eps), q_pos, config, is_global, kv,
                      k_pos, k_valid, cache_index)
    x = tap("resid_mid", x + tap("attn_out", rms_norm(h, layer["post_attn_norm"], eps)))
    h = tap("mlp_in", rms_norm(x, layer["ffn_norm"], eps))
    h = jax.nn.gelu(h @ layer["gate"], approximate=True) * (h @ layer["up"])
    x = tap("resid_post", x + tap("mlp_out", rms_norm(h @ layer["down"], layer["post_ffn_norm"], eps)))
    return x, kv


def _no_tap(kind: str, value: Array) -> Array:
    return value


def embed(params: dict[str, Any], ids: Array, config: Gemma3Config) -> Array:
    x = jnp.take(params["embed"], ids, axis=0)
    return x * jnp.asarray(config.embed_scale, dtype=x.dtype)


def unembed(params: dict[str, Any], x: Array, config: Gemma3Config) -> Array:
    """float32 logits [B, S, V]: final norm, then the tied embedding (Gemma 3: no soft-cap)."""
    x = rms_norm(x, params["final_norm"], config.rms_norm_eps)
    return jnp.einsum("bsd,vd->bsv", x, params["embed"]).astype(jnp.float32)


def forward(params: dict[str, Any], ids: Array, mask: Array, edit_args: Sequence[Any], *,
            config: Gemma3Config, n_blocks: int, hook_points: tuple[HookPoint, ...],
            edit_spec: tuple[tuple[HookPoint, EditFn], ...], with_logits: bool,
            kv_cache: list[tuple[Array, Array]] | None = None, start: Array | None = None,
            ) -> tuple[dict[HookPoint, Array], Array | None, list[tuple[Array, Array]]]:
    """Run the first `n_blocks` blocks on ids [B, S] (mask [B, S], True = real, right-padded).

    `edit_spec[i] = (point, fn)` replaces the value at that hook point (jaxdict.lm.hooks) by
    fn(x, edit_args[i]) (by fn(x, edit_args[i], positions) when fn.uses_positions is true). An edit
    with `fn.reads = KIND` also gets `source=` the value of hook KIND of the same block, which must
    come earlier in the block: a transcoder replaces `mlp_out.L` by its prediction from `mlp_in.L`.
    Returns ({point: [B, S, d]} for `hook_points` (after any edit there), logits [B, S, V] or None,
    new KV pairs). With `kv_cache` ([B, T, K, hd] pairs), tokens sit at positions start..
    start+S-1 and attend to every earlier cache entry (generation); otherwise positions are 0..S-1.
    """
    B, S = ids.shape
    offset = jnp.zeros((), jnp.int32) if start is None else start
    q_pos = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32)[None, :] + offset, (B, S))
    if kv_cache is None:
        k_pos, k_valid = q_pos, mask
    else:
        T = kv_cache[0][0].shape[1]
        k_pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None, :], (B, T))
        k_valid = jnp.ones((B, T), dtype=bool)  # causality hides entries not yet written
    edits = {point: (fn, edit_args[i]) for i, (point, fn) in enumerate(edit_spec)}
    wanted = set(hook_points)
    hooks: dict[HookPoint, Array] = {}

    def tap_of(layer: int) -> TapFn:
        seen: dict[str, Array] = {}  # this block's hook values so far (after their edits)

        def tap(kind: str, value: Array) -> Array:
            point = HookPoint(kind, layer)
            if point in edits:
                fn, args = edits[point]
                # An edit that marks itself `uses_positions` also gets the absolute positions
                # [B, S] (steering leaves position 0, BOS, alone; generation steps start past it).
                extra = (q_pos,) if getattr(fn, "uses_positions", False) else ()
                reads = getattr(fn, "reads", None)
                if reads is None:
                    value = fn(value, args, *extra)
                elif reads not in seen:
                    raise ValueError(f"the edit at {kind}.{layer} reads hook {reads}.{layer}, which does not come "
                                     f"before it in a block (order: {', '.join(HOOK_KINDS)})")
                else:
                    value = fn(value, args, *extra, source=seen[reads])
            seen[kind] = value
            if point in wanted:
                hooks[point] = value
            return value
        return tap

    x = embed(params, ids, config)
    new_kv: list[tuple[Array, Array]] = []
    for i in range(n_blocks):
        x, kv = block(params["layers"][i], x, q_pos, config, config.layer_types[i] == FULL,
                      None if kv_cache is None else kv_cache[i], k_pos, k_valid, start, tap_of(i))
        new_kv.append(kv)
    logits = unembed(params, x, config) if with_logits else None
    return hooks, logits, new_kv
