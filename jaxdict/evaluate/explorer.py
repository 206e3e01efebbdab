"""Feature explorer: per-feature statistics, top and random activating contexts, logit effects,
decoder neighbours, and the features most active on a given text.

A corpus sample is a run of store rows (activations + token ids + doc ids + positions). One pass
over it keeps, per feature and on device, the largest activation, the firing count, the `n_top`
largest activations with their rows, and a uniform random sample of `n_samples` active tokens
(each active token gets a random priority; the highest priorities form the sample), from which
examples across the activation quantiles are drawn.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdict.evaluate.heldout import window_starts
from jaxdict.sae.config import SAEConfig
from jaxdict.sae.inference import SAE, encode_raw
from jaxdict.sae.params import SAEParams


@dataclasses.dataclass
class FeatureScan:
    """Per feature (F): max_act, fire_count, sum_act; top_values/top_rows [F, n_top] (row -1 =
    none); sample_values/sample_rows [F, n_samples]. Rows index the scanned sample."""

    n_tokens: int
    max_act: np.ndarray
    fire_count: np.ndarray
    sum_act: np.ndarray
    top_values: np.ndarray
    top_rows: np.ndarray
    sample_values: np.ndarray
    sample_rows: np.ndarray

    @property
    def density(self) -> np.ndarray:
        return self.fire_count / max(self.n_tokens, 1)

    @property
    def mean_active(self) -> np.ndarray:
        """Mean activation over the tokens where the feature fires (0 for dead features)."""
        return np.where(self.fire_count > 0, self.sum_act / np.maximum(self.fire_count, 1), 0.0)


def _merge_top(keys, payload_a, payload_b, new_keys, new_a, new_b, n: int):
    """Keep, per feature, the n largest keys of old [F, n] and new [F, B] with their payloads."""
    all_keys = jnp.concatenate([keys, new_keys], axis=1)
    k, idx = jax.lax.top_k(all_keys, n)
    a = jnp.take_along_axis(jnp.concatenate([payload_a, new_a], axis=1), idx, axis=1)
    b = jnp.take_along_axis(jnp.concatenate([payload_b, new_b], axis=1), idx, axis=1)
    return k, a, b


@functools.partial(jax.jit, static_argnames=("cfg", "n_top", "n_samples"), donate_argnums=(0,))
def _scan_step(state: dict, params: SAEParams, x: jax.Array, rows: jax.Array, key: jax.Array, *,
               cfg: SAEConfig, n_top: int, n_samples: int) -> dict:
    f = encode_raw(params, x, cfg).T  # [F, B]
    active = f > 0
    rows_fb = jnp.broadcast_to(rows[None, :], f.shape)
    top_v, _, top_r = _merge_top(state["top_values"], state["top_values"], state["top_rows"],
                                 jnp.where(active, f, -1.0), f, rows_fb, n_top)
    prio = jnp.where(active, jax.random.uniform(key, f.shape), -1.0)
    s_p, s_v, s_r = _merge_top(state["sample_prio"], state["sample_values"], state["sample_rows"],
                               prio, f, rows_fb, n_samples)
    return {
        "max_act": jnp.maximum(state["max_act"], jnp.max(f, axis=1)),
        "fire_count": state["fire_count"] + jnp.sum(active, axis=1, dtype=jnp.int32),
        "sum_act": state["sum_act"] + jnp.sum(f, axis=1),
        "top_values": top_v, "top_rows": jnp.where(top_v > 0, top_r, -1),
        "sample_prio": s_p, "sample_values": s_v, "sample_rows": jnp.where(s_p >= 0, s_r, -1),
    }


def scan_features(sae: SAE, batches: Iterable[np.ndarray], n_top: int = 12, n_samples: int = 24,
                  seed: int = 0) -> FeatureScan:
    """One pass over batches of raw activations [B, d]; rows are numbered in order from 0."""
    F = sae.n_features
    neg = jnp.full((F, n_top), -1.0, jnp.float32)
    state = {
        "max_act": jnp.zeros((F,), jnp.float32), "fire_count": jnp.zeros((F,), jnp.int32),
        "sum_act": jnp.zeros((F,), jnp.float32),
        "top_values": neg, "top_rows": jnp.full((F, n_top), -1, jnp.int32),
        "sample_prio": jnp.full((F, n_samples), -1.0, jnp.float32),
        "sample_values": jnp.zeros((F, n_samples), jnp.float32),
        "sample_rows": jnp.full((F, n_samples), -1, jnp.int32),
    }
    key = jax.random.PRNGKey(seed)
    n = 0
    for i, x in enumerate(batches):
        x = np.asarray(x)
        rows = jnp.arange(n, n + len(x), dtype=jnp.int32)
        state = _scan_step(state, sae.params, jnp.asarray(x), rows, jax.random.fold_in(key, i),
                           cfg=sae.cfg, n_top=n_top, n_samples=n_samples)
        n += len(x)
    s = jax.device_get(state)
    top_values = np.where(s["top_rows"] >= 0, s["top_values"], 0.0).astype(np.float32)
    return FeatureScan(n_tokens=n, max_act=np.asarray(s["max_act"]), fire_count=np.asarray(s["fire_count"]),
                       sum_act=np.asarray(s["sum_act"], np.float64), top_values=top_values,
                       top_rows=np.asarray(s["top_rows"]), sample_values=np.asarray(s["sample_values"]),
                       sample_rows=np.asarray(s["sample_rows"]))


def quantile_examples(values: np.ndarray, rows: np.ndarray, n_bins: int = 4, per_bin: int = 3
                      ) -> list[tuple[str, list[tuple[int, float]]]]:
    """Random active examples grouped by activation quantile (bins of the sampled values)."""
    keep = rows >= 0
    v, r = values[keep], rows[keep]
    if len(v) == 0:
        return []
    order = np.argsort(v)
    v, r = v[order], r[order]
    out = []
    for b, chunk in enumerate(np.array_split(np.arange(len(v)), n_bins)):
        if len(chunk) == 0:
            continue
        lo, hi = b * 100 // n_bins, (b + 1) * 100 // n_bins
        picks = chunk[np.linspace(0, len(chunk) - 1, min(per_bin, len(chunk))).astype(int)]
        out.append((f"quantile {lo}-{hi} % ({v[chunk[0]]:.3g}–{v[chunk[-1]]:.3g})",
                    [(int(r[i]), float(v[i])) for i in picks]))
    return out[::-1]


def context_ranges(rows: np.ndarray, doc_ids: np.ndarray, positions: np.ndarray, before: int = 12,
                   after: int = 4) -> list[tuple[int, int]]:
    """[lo, hi) sample rows around each row, clipped to its harvest window."""
    starts = window_starts(doc_ids, positions)
    window_id = np.cumsum(starts) - 1
    out = []
    n = len(positions)
    for r in rows:
        lo, hi = max(0, r - before), min(n, r + after + 1)
        while window_id[lo] != window_id[r]:
            lo += 1
        while window_id[hi - 1] != window_id[r]:
            hi -= 1
        out.append((int(lo), int(hi)))
    return out


def feature_values_at(sae: SAE, x: np.ndarray, pairs: Sequence[tuple[int, int]], chunk: int = 2048) -> np.ndarray:
    """float32 [len(pairs)]: activation of feature j at sample row r for each (r, j) pair."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    out = np.zeros(len(pairs), np.float32)
    uniq, inverse = np.unique(pairs[:, 0], return_inverse=True)
    for a in range(0, len(uniq), chunk):
        f = np.asarray(sae.encode(x[uniq[a:a + chunk]]))
        sel = (inverse >= a) & (inverse < a + chunk)
        out[sel] = f[inverse[sel] - a, pairs[sel, 1]]
    return out


@functools.partial(jax.jit, static_argnames=("n",))
def _logit_effects(W_dec_rows, final_norm, embed, n: int):
    # The decoder direction reaches the logits through the final RMSNorm and the tied unembedding.
    # RMSNorm divides by the residual's RMS, a positive scalar of the whole residual that does not
    # change which tokens a direction favours; we keep its elementwise weight g and drop that
    # scalar: effect = (W_dec,i ⊙ g) · Eᵀ (the usual "logit lens" reading, e.g. Bricken et al. 2023).
    logits = jnp.dot(W_dec_rows * final_norm[None, :], embed.T, preferred_element_type=jnp.float32)
    top_v, top_i = jax.lax.top_k(logits, n)
    bot_v, bot_i = jax.lax.top_k(-logits, n)
    return top_v, top_i, -bot_v, bot_i


def logit_effects(sae: SAE, lm, features: Sequence[int], n: int = 10, chunk: int = 32):
    """(promoted ids, promoted values, suppressed ids, suppressed values), each [len(features), n]."""
    if lm.config.d_model != sae.d_out:  # the decoder writes d_out (a transcoder's target hook)
        raise ValueError(f"SAE decoder width {sae.d_out} but the language model's width is {lm.config.d_model}")
    idx = np.asarray(features, np.int64)
    parts = []
    for a in range(0, len(idx), chunk):
        rows = sae.params.W_dec[jnp.asarray(idx[a:a + chunk])]
        parts.append(jax.device_get(_logit_effects(rows, lm.params["final_norm"].astype(jnp.float32),
                                                   lm.unembed_matrix.astype(jnp.float32), n)))
    if not parts:
        empty = np.zeros((0, n))
        return empty.astype(np.int64), empty, empty.astype(np.int64), empty
    tv, ti, bv, bi = (np.concatenate([p[k] for p in parts]) for k in range(4))
    return ti, tv, bi, bv


def decoder_neighbours(sae: SAE, features: Sequence[int], n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """(ids, cosines) [len(features), n]: the nearest other features by decoder-row cosine."""
    W = np.asarray(sae.params.W_dec, np.float32)
    U = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)
    idx = np.asarray(features, np.int64)
    cos = U[idx] @ U.T
    cos[np.arange(len(idx)), idx] = -np.inf
    n = min(n, sae.n_features - 1)
    top = np.argsort(-cos, axis=1)[:, :n]
    return top, np.take_along_axis(cos, top, axis=1)


def search_text(lm, sae: SAE, text: str, n: int = 20) -> dict[str, Any]:
    """The features most active on `text` (max over its tokens, BOS excluded), with per-token values."""
    if sae.hook is None:
        raise ValueError("the SAE records no hook; load it with hook='resid_post.L'")
    ids = lm.tokenizer.encode(text)
    if len(ids) < 2:
        raise ValueError("search text is empty")
    if len(ids) > lm.config.max_context:
        raise ValueError(f"search text has {len(ids)} tokens; the context length is {lm.config.max_context}")
    acts = lm.activations(jnp.asarray([ids], jnp.int32), sae.hook)[0, 1:]
    f = np.asarray(sae.encode(acts))  # [T, F]
    peak = f.max(axis=0)
    order = [int(i) for i in np.argsort(-peak)[:n] if peak[i] > 0]
    return {"text": text, "tokens": [lm.tokenizer.id_to_piece(t) for t in ids[1:]],
            "features": [{"feature": i, "max": float(peak[i]),
                          "frac_of_max": (float(peak[i] / sae.max_activations[i])
                                          if sae.max_activations is not None and sae.max_activations[i] > 0 else None),
                          "per_token": [round(float(v), 4) for v in f[:, i]]} for i in order]}
