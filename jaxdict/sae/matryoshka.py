"""Matryoshka SAEs: the nested prefix reconstruction loss (Bussmann et al. 2025, "Learning
Multi-Level Features with Matryoshka Sparse Autoencoders"; Nabeshima 2024, "Matryoshka SAEs").

With prefixes m_1 < … < m_P = F, the reconstruction loss is the mean over prefixes of
‖x − (f_{[0, m)} W_dec[0:m] + b_dec)‖², where f is the SAE's one selection of active latents
(TopK per token, or BatchTopK over the batch) and f_{[0, m)} that selection truncated to the
latents below m. The early latents must reconstruct x on their own, so they learn the general
features and the later ones refine them instead of absorbing them.

Truncate, or re-select within each prefix? We truncate, as the paper does (its loss sums
‖x − f(x)_{0:m} W_dec,{0:m} − b_dec‖² over m with f(x) the full BatchTopK code) and as SAELens
6.54's MatryoshkaBatchTopKTrainingSAE does (it slices the full feature_acts per width; we read
that source). Reasons: (1) at inference a Matryoshka SAE is one BatchTopK/JumpReLU (or TopK) SAE,
and taking its first m latents *is* the truncated code, so the loss trains exactly what a user of a
prefix gets; (2) one selection and one decode's worth of matmuls serve every prefix; re-selecting
would need P selections and P decodes, and would give each prefix its own L0 (k per token) that
no inference-time prefix has.

Cost: the latents are decoded once per block [m_{j−1}, m_j) and the block reconstructions are
cumulative-summed, so all P reconstructions cost one decode's matmuls plus a P·B·d sum
(dense path). Sharded over `model`, each shard decodes the blocks that intersect its features
(a lax.switch on the shard index picks static slices) and a psum adds P partial [B, d] sums
instead of one. TopK's sparse path masks its [B, k] (value, index) list per block and runs the
sparse decoder once per block: P·O(B·k·d) work, ≤ P/64 of one dense decode where sparse is chosen.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P
from jaxtyping import Array, Float, Int

from jaxdict.sae import sharded_ops
from jaxdict.sae.axes import DATA, MODEL


def prefix_blocks(prefixes: tuple[int, ...]) -> list[tuple[int, int]]:
    """[(0, m_1), (m_1, m_2), …]: the latents each prefix adds to the one before it."""
    starts = (0, *prefixes[:-1])
    return list(zip(starts, prefixes))


def _model_size(mesh: Mesh | None) -> int:
    return 1 if mesh is None else mesh.shape[MODEL]


def _dot(a: Array, b: Array, compute_dtype: str) -> Array:
    cdt = jnp.dtype(compute_dtype)
    return jnp.dot(a.astype(cdt), b.astype(cdt), preferred_element_type=jnp.float32)


def _block_decodes(f: Float[Array, "B n"], W_dec: Float[Array, "n d"], offset: int,
                   blocks: list[tuple[int, int]], compute_dtype: str) -> Float[Array, "P B d"]:
    """f W_dec restricted to each block, for the features [offset, offset + n) held here (static
    slices; zero for the blocks that do not meet them)."""
    n = f.shape[1]
    parts = []
    for start, end in blocks:
        lo, hi = max(start, offset) - offset, min(end, offset + n) - offset
        if lo < hi:
            parts.append(_dot(f[:, lo:hi], W_dec[lo:hi], compute_dtype))
        else:
            parts.append(jnp.zeros((f.shape[0], W_dec.shape[1]), jnp.float32))
    return jnp.stack(parts)


def dense_prefix_decode(f: Float[Array, "B F"], W_dec: Float[Array, "F d"], prefixes: tuple[int, ...],
                        mesh: Mesh | None, compute_dtype: str = "float32") -> Float[Array, "P B d"]:
    """Row p: f_{[0, prefixes[p])} W_dec (without b_dec), from one decode of each block.

    Sharded over `model` (f [B, F] as P(data, model), W_dec as P(model, None)): each shard decodes
    only the blocks meeting its features, with static slices chosen by a lax.switch on its index,
    and the [P, B, d] block sums are psummed — prefix boundaries need not align with the shards."""
    blocks = prefix_blocks(prefixes)
    m = _model_size(mesh)
    if m == 1:
        return jnp.cumsum(_block_decodes(f, W_dec, 0, blocks, compute_dtype), axis=0)
    n_local = f.shape[1] // m

    def local(f_block, W_block):
        branches = [
            (lambda f_, W_, s=s: _block_decodes(f_, W_, s * n_local, blocks, compute_dtype)) for s in range(m)
        ]
        partial = lax.switch(lax.axis_index(MODEL), branches, f_block, W_block)
        return jnp.cumsum(lax.psum(partial, MODEL), axis=0)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(DATA, MODEL), P(MODEL, None)),
                         out_specs=P(None, DATA, None))(f, W_dec)


def sparse_prefix_decode(values: Float[Array, "B k"], indices: Int[Array, "B k"], W_dec: Float[Array, "F d"],
                         prefixes: tuple[int, ...], mesh: Mesh | None) -> Float[Array, "P B d"]:
    """Row p: Σ_{j: indices[b, j] < prefixes[p]} values[b, j] · W_dec[indices[b, j]] (without b_dec):
    the sparse decoder once per block, its entries outside the block zeroed, then a cumulative sum."""
    parts = []
    for start, end in prefix_blocks(prefixes):
        inside = (indices >= start) & (indices < end)
        parts.append(sharded_ops.sharded_sparse_decode(jnp.where(inside, values, jnp.zeros_like(values)),
                                                       indices, W_dec, mesh))
    return jnp.cumsum(jnp.stack(parts), axis=0)


def prefix_active_counts(active: Array, indices: Array | None, prefixes: tuple[int, ...]) -> Float[Array, "P B"]:
    """Per token, how many active latents lie below each prefix: from a dense [B, F] mask
    (indices None) or from a [B, k] mask over the latents `indices` names."""
    rows = []
    for m in prefixes:
        below = active[:, :m] if indices is None else active & (indices < m)
        rows.append(jnp.sum(below, axis=-1).astype(jnp.float32))
    return jnp.stack(rows)


def prefix_sq_errors(x: Float[Array, "B d"], prefix_x_hat: Float[Array, "P B d"]) -> Float[Array, " P"]:
    """Mean over tokens of ‖x − x̂_m‖², one per prefix."""
    diff = x.astype(jnp.float32)[None] - prefix_x_hat
    return jnp.mean(jnp.sum(jnp.square(diff), axis=-1), axis=-1)
