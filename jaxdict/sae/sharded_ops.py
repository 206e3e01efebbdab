"""Collectives for a feature-sharded SAE: global top-k, gathered pre-activations, sparse decode.

Features (F) are split over the mesh axis `model`, the batch over `data`. Each op runs under
`jax.shard_map` so the communication is explicit and small: a top-k exchanges k candidates per
shard (OpenAI's `sharded_topk` idea), a gather or sparse decode exchanges one [B_local, ·] partial
sum. With `mesh=None` (or a model axis of size 1) the same maths runs unsharded.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P
from jaxtyping import Array, Float, Int

DATA, MODEL = "data", "model"


def _model_size(mesh: Mesh | None) -> int:
    return 1 if mesh is None else mesh.shape[MODEL]


def global_topk(
    z: Float[Array, "B F"], k: int, mesh: Mesh | None
) -> tuple[Float[Array, "B k"], Int[Array, "B k"]]:
    """The k largest entries of each row over all F features, and their global indices.

    Sharded: each model shard keeps its local top-k, the k·m candidates are gathered, and a second
    top-k picks the global winners — equal to the unsharded top-k (up to the order of exact ties).
    """
    if _model_size(mesh) == 1:
        return lax.top_k(z, k)

    def local(z_block):
        n_local = z_block.shape[-1]
        values, indices = lax.top_k(z_block, min(k, n_local))
        indices = indices + lax.axis_index(MODEL) * n_local
        all_values = lax.all_gather(values, MODEL, axis=1, tiled=True)
        all_indices = lax.all_gather(indices, MODEL, axis=1, tiled=True)
        best, where = lax.top_k(all_values, k)
        return best, jnp.take_along_axis(all_indices, where, axis=1)

    # all_gather's result is the same on every model shard, but its type stays "varying"; the
    # selection carries no gradient, so skipping the replication check is safe here.
    return jax.shard_map(
        local, mesh=mesh, in_specs=P(DATA, MODEL), out_specs=(P(DATA, None), P(DATA, None)), check_vma=False
    )(z)


def global_kth_largest(z: Float[Array, "B F"], n_keep: int, mesh: Mesh | None) -> Float[Array, ""]:
    """The n_keep-th largest value over all B·F entries (the BatchTopK cut-off)."""
    if mesh is None or mesh.size == 1:
        return lax.top_k(z.reshape(-1), n_keep)[0][-1]

    def local(z_block):
        flat = z_block.reshape(-1)
        values = lax.top_k(flat, min(n_keep, flat.shape[0]))[0]
        everything = lax.all_gather(values, (DATA, MODEL), axis=0, tiled=True)
        return lax.top_k(everything, n_keep)[0][-1]

    return jax.shard_map(local, mesh=mesh, in_specs=P(DATA, MODEL), out_specs=P(), check_vma=False)(z)


def _local_rows(indices, n_local):
    """Map global feature indices to this shard's rows, with a mask of those that live here."""
    offset = lax.axis_index(MODEL) * n_local
    local = indices - offset
    here = (local >= 0) & (local < n_local)
    return jnp.clip(local, 0, n_local - 1), here


def gather_preacts(
    x_in: Float[Array, "B d"],
    W_enc: Float[Array, "d F"],
    b_enc: Float[Array, " F"],
    indices: Int[Array, "B k"],
) -> Float[Array, "B k"]:
    """z[b, j] = x_in[b] · W_enc[:, indices[b, j]] + b_enc[indices[b, j]], differentiable.

    Recomputing only the selected pre-activations makes the encoder's backward pass a scatter of
    B·k rows instead of a dense B×d×F matmul (Gao et al. 2024 §D, "sparse kernels").
    """
    columns = W_enc.T[indices]  # [B, k, d]
    return jnp.einsum("bd,bkd->bk", x_in, columns) + b_enc[indices]


def sparse_decode(
    values: Float[Array, "B k"], indices: Int[Array, "B k"], W_dec: Float[Array, "F d"]
) -> Float[Array, "B d"]:
    """Σ_j values[b, j] · W_dec[indices[b, j]]: the decoder on the k active latents only."""
    return jnp.einsum("bk,bkd->bd", values, W_dec[indices])


def sharded_gather_preacts(x_in, W_enc, b_enc, indices, mesh: Mesh | None):
    """`gather_preacts` with W_enc / b_enc split over `model`: local gather, masked, summed."""
    if _model_size(mesh) == 1:
        return gather_preacts(x_in, W_enc, b_enc, indices)

    def local(x_block, W_block, b_block, idx_block):
        rows, here = _local_rows(idx_block, W_block.shape[1])
        z = gather_preacts(x_block, W_block, b_block, rows)
        return lax.psum(jnp.where(here, z, jnp.zeros_like(z)), MODEL)

    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(DATA, None), P(None, MODEL), P(MODEL), P(DATA, None)),
        out_specs=P(DATA, None),
    )(x_in, W_enc, b_enc, indices)


def sharded_sparse_decode(values, indices, W_dec, mesh: Mesh | None):
    """`sparse_decode` with W_dec split over `model`: each shard decodes its own rows, then psum."""
    if _model_size(mesh) == 1:
        return sparse_decode(values, indices, W_dec)

    def local(v_block, idx_block, W_block):
        rows, here = _local_rows(idx_block, W_block.shape[0])
        return lax.psum(sparse_decode(jnp.where(here, v_block, jnp.zeros_like(v_block)), rows, W_block), MODEL)

    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(DATA, None), P(DATA, None), P(MODEL, None)),
        out_specs=P(DATA, None),
    )(values, indices, W_dec)
