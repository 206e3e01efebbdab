"""Each row's k largest entries as a mask, by a counting search for the k-th largest value.

AuxK (sae/auxk.py) picks each token's k_aux largest pre-activations among the C slots of its dead
latent buffer (k_aux = d_in/2 = 320 of C = 1,024 at Gemma 3 270M's d_in with 5 % of F 16,384 dead).
XLA:CPU runs `lax.top_k` there as a per-row partial sort on one thread: 350–390 ms at B 4,096 on the
shared 2-core EPYC (BENCHMARKS.md, AuxK). Only the selected *set* is needed, not the order, so here
each row's k-th largest value is found by bisection on its bits (31 compare-and-count passes) and the
mask is a comparison with it. The passes run over blocks of 16 rows, so a block (64 KB of keys at
C 1,024) stays in cache across its passes: 70–90 ms for the same mask, side by side (a single pass
over all rows at a time measured 310 ms; that is memory traffic, 32 reads of the [B, C] array).

That blocking is for XLA:CPU only. On a GPU each block's passes are kernels launched one after
another, ~8,000 for B 4,096 (256 blocks × 31): the AuxK step measured 19× the step without AuxK on
an H200 (169 against 9 ms, fp32, d 640, F 16,384, 5 % dead; BENCHMARKS.md, "H200: AuxK"). Off the
CPU the search runs over all rows at once, its 31 passes unrolled: 31 fused compare-and-count kernels.

The selected set equals lax.top_k's exactly, ties included: entries above the k-th largest value,
then among entries equal to it the ones with the lowest column index, as many as fill k (lax.top_k
orders equal values by index). Entries marked invalid rank as -inf, as in lax.top_k over the values
with the invalid ones set to -inf (a valid -inf ties with them, the lower column first), and are
never in the mask; a row with fewer than k valid entries picks all of them. NaN is not expected
(pre-activations of finite parameters); it would rank above +inf.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P
from jaxtyping import Array, Bool, Float, Int

from jaxdict.sae.axes import DATA, MODEL

# Rows per block of the search: the block's keys (16 × C int32) stay in L1/L2 over its 31 passes.
# 16 measured fastest of 4, 8, 16 and 64 at C 1,024 (BENCHMARKS.md, AuxK).
_BLOCK_ROWS = 16
_LOWEST = jnp.iinfo(jnp.int32).min
_MINUS_INF_KEY = -0x7F800000 - 1  # the key of -inf: bits 0xFF800000 with the magnitude bits flipped


def order_keys(values: Float[Array, "R C"], valid: Bool[Array, "R C"] | Bool[Array, " C"]) -> Int[Array, "R C"]:
    """int32 keys whose signed order is the float order of `values` (negative floats get their
    magnitude bits flipped); invalid entries get the key of -inf."""
    bits = lax.bitcast_convert_type(values.astype(jnp.float32), jnp.int32)
    keys = jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)
    return jnp.where(valid, keys, jnp.int32(_MINUS_INF_KEY))


def kth_largest_key(keys: Int[Array, "R C"], k: int, unroll: bool = False) -> Int[Array, " R"]:
    """Per row, the largest t with #{key ≥ t} ≥ k (the k-th largest key), built from the sign bit
    down: one counting pass per bit (`unroll`: as 31 passes in the program, no loop)."""
    def count_at_least(t):
        return jnp.sum((keys >= t[:, None]).astype(jnp.int32), axis=1)

    zero = jnp.zeros(keys.shape[:1], jnp.int32)
    kth = jnp.where(count_at_least(zero) >= k, zero, jnp.full_like(zero, _LOWEST))

    def add_bit(i, kth):
        candidate = kth + (jnp.int32(1) << (30 - i))
        return jnp.where(count_at_least(candidate) >= k, candidate, kth)

    return lax.fori_loop(0, 31, add_bit, kth, unroll=unroll)


def _column_index(a: Array) -> Int[Array, "1 C"]:
    return jnp.arange(a.shape[1], dtype=jnp.int32)[None, :]


def last_tie_column(ties: Bool[Array, "R C"], room: Int[Array, "R 1"]) -> Int[Array, "R 1"]:
    """Per row, the largest column j with fewer than `room` ties left of it (room ≥ 1): the ties at
    columns ≤ j are the first `room` ones. Built bit by bit like the k-th key, one counting pass
    per bit of C (a cumsum along the row is a reduce-window on XLA:CPU, slower than these passes)."""
    column = _column_index(ties)
    last = jnp.zeros_like(room)
    for bit in reversed(range(max(ties.shape[1] - 1, 1).bit_length())):
        candidate = last + (1 << bit)
        before = jnp.sum((ties & (column < candidate)).astype(jnp.int32), axis=1, keepdims=True)
        last = jnp.where(before < room, candidate, last)
    return last


def _block_mask(values: Float[Array, "R C"], valid: Bool[Array, " C"], k: int,
                unroll: bool = False) -> Bool[Array, "R C"]:
    keys = order_keys(values, valid[None, :])  # here, so the block's keys never leave the cache
    kth = kth_largest_key(keys, k, unroll)[:, None]
    above = keys > kth
    ties = keys == kth
    room = k - jnp.sum(above.astype(jnp.int32), axis=1, keepdims=True)
    n_ties = jnp.sum(ties.astype(jnp.int32), axis=1, keepdims=True)
    # Only ties that do not all fit need ranking by index: rare with real values, always when a
    # row has fewer than k valid entries (the k-th is then -inf, tied with the invalid ones).
    excess = jnp.any(n_ties > room)

    def first_ties(_):
        return above | (ties & (_column_index(keys) <= last_tie_column(ties, room)))

    return lax.cond(excess, first_ties, lambda _: above | ties, None) & valid[None, :]


def _block_rows(n_rows: int) -> int:
    rows = _BLOCK_ROWS
    while n_rows % rows:
        rows //= 2
    return rows


def runs_on_cpu(mesh: Mesh | None) -> bool:
    """Whether the program is compiled for XLA:CPU: the mesh's devices, else JAX's default backend."""
    if mesh is None:
        return jax.default_backend() == "cpu"
    return mesh.devices.flat[0].platform == "cpu"


def row_topk_mask(values: Float[Array, "R C"], valid: Bool[Array, " C"], k: int,
                  on_cpu: bool = True) -> Bool[Array, "R C"]:
    """Each row's k largest valid values (ties to the lower column) as a mask, on one device; in
    blocks of rows that stay in cache `on_cpu`, else over all rows at once (module docstring)."""
    n_rows, n_cols = values.shape
    if k >= n_cols:
        return jnp.broadcast_to(valid[None, :], values.shape)
    if not on_cpu:
        return _block_mask(values, valid, k, unroll=True)
    rows = _block_rows(n_rows)
    blocks = lax.map(lambda b: _block_mask(b, valid, k), values.reshape(n_rows // rows, rows, n_cols))
    return blocks.reshape(n_rows, n_cols)


def topk_mask(values: Float[Array, "B C"], valid: Bool[Array, " C"], k: int, mesh: Mesh | None,
              model_size: int) -> Bool[Array, "B C"]:
    """Which entries are among each row's k largest valid values (ties to the lower column), as
    lax.top_k over the valid entries would pick them.

    Columns split over `model` (the AuxK buffer's slots): an all-to-all over `model` gives each
    shard whole rows for 1/m of its data rows, the search runs there once per row (no shard
    repeats another's work, no collective per pass), and a second all-to-all returns the mask to
    the column split. Needs the per-device row count divisible by m."""
    values = lax.stop_gradient(values)
    on_cpu = runs_on_cpu(mesh)
    if model_size == 1:
        return row_topk_mask(values, valid, k, on_cpu)

    def block(v, all_valid):
        whole_rows = lax.all_to_all(v, MODEL, split_axis=0, concat_axis=1, tiled=True)
        mask = row_topk_mask(whole_rows, all_valid, k, on_cpu).astype(jnp.int8)
        return lax.all_to_all(mask, MODEL, split_axis=1, concat_axis=0, tiled=True) > 0

    return jax.shard_map(block, mesh=mesh, in_specs=(P(DATA, MODEL), P()), out_specs=P(DATA, MODEL))(values, valid)
