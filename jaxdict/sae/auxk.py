"""AuxK among the dead latents only (Gao et al. 2024 App. A.2), at a cost that grows with their number.

The dead latents' ids go into a small buffer of C slots (C ≥ their number, from a few fixed sizes;
`dead_buffer_sizes`); their pre-activations z[:, buffer] and decoder rows are gathered, the top k_aux
per token are picked among them and decoded with a [B, C] @ [C, d] matmul. Four B·C·d matmuls
(the decode, three backward; on the CPU the pre-activations are read from the forward pass, on
accelerators they are recomputed, a fifth) instead of a top-k over all F columns of every row: at 5 %
dead that is ~4·C/F of the encoder's B·d·F matmul.

The train step takes AuxK's gradient inside each branch of the buffer-size switch and adds it
outside (`add_aux_k_gradient`): differentiating through a lax.switch costs every step the other
branches' zero-filled residuals, and a branch handing the [d, F] gradients through copies them.

Semantics, exactly: with n_dead ≤ C every dead latent is a candidate and the result equals the
top-k_aux over all dead latents of each row (ties to the lower feature id, as `lax.top_k`). With
more dead latents than the largest buffer holds, the candidates are a window of C of them in feature
order that moves by C every step (by rank among the dead), so each dead latent is a candidate once
every ⌈n_dead / C⌉ steps.

Sharded (features over `model`): every shard fills its own C/m slots with dead latents of its own
block of features, so their weights, pre-activations and gradients are read and written where they
live, with no collective; only the per-row selection over all C slots moves [B, C] data (two
all-to-alls, sae/row_topk.py). The buffer size is then set by the fullest shard: m × its dead count
(`buffer_demand`). With more dead than a shard's C/m slots, that shard's window moves as above,
by C/m among its own dead: the result is the same on every mesh only while every shard's dead fit
(always, with aux_capacity = F). The gathered alternative (slots taken from whichever shard owns
each id) moved a psum-scatter of the slots' weights and an all-gather of their gradients every
step: compiled for 16 TPU v5p chips at d 2,304, F 2^20, that was 2.9 GB of collectives per device
per step, against 0.4 GB now (BENCHMARKS.md, "Ninth session").
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P
from jaxtyping import Array, Bool, Float, Int

from jaxdict.sae import row_topk, sharded_ops
from jaxdict.sae.config import SAEConfig
from jaxdict.sae.sharded_ops import DATA, MODEL

# Buffer sizes: the capacity and its halvings, this many of them. A step uses the smallest that
# holds its dead latents, so the buffer is at most 2× the dead set (above the smallest size).
_N_SIZES = 4


def model_size(mesh: Mesh | None) -> int:
    return 1 if mesh is None else mesh.shape[MODEL]


def dead_buffer_sizes(cfg: SAEConfig, mesh: Mesh | None = None) -> tuple[int, ...]:
    """Increasing buffer sizes, each a multiple of the model axis: capacity/8, capacity/4, capacity/2,
    capacity (cfg.effective_aux_capacity). Sizes up to k_aux need no top-k: all their dead latents
    are picked."""
    m = model_size(mesh)
    capacity = math.ceil(cfg.effective_aux_capacity / m) * m
    sizes = {max(m, math.ceil((capacity >> i) / m) * m) for i in range(_N_SIZES)}
    return tuple(sorted(sizes))


def buffer_demand(dead: Bool[Array, "... F"], mesh: Mesh | None) -> Int[Array, ""]:
    """The buffer size `dead` needs: m × the most dead latents in any `model` shard's block of
    features (and in any member of leading axes, a sweep's), since each shard fills its own C/m
    slots from its own block (`dead_slots`). Unsharded, the dead count. Dead latents of a trained
    SAE are spread evenly over feature ids (nothing orders them), so this is close to the count."""
    m = model_size(mesh)
    blocks = dead.reshape(dead.shape[:-1] + (m, dead.shape[-1] // m))
    return m * jnp.max(jnp.sum(blocks, axis=-1, dtype=jnp.int32))


def bucket_index(demand: Int[Array, ""], sizes: tuple[int, ...]) -> Int[Array, ""]:
    """0 when nothing is dead, else 1 + the index of the smallest size holding `demand` (or the last)."""
    fits = jnp.sum(demand > jnp.asarray(sizes[:-1], jnp.int32), dtype=jnp.int32)
    return jnp.where(demand > 0, 1 + fits, 0)


def select_dead(dead: Bool[Array, " F"], capacity: int, step: Int[Array, ""]) -> tuple[Array, Array]:
    """Up to `capacity` dead latent ids in increasing order, and which slots hold one.

    When more are dead, the window of ranks [start, start + capacity) among the dead is taken, with
    start = (step mod ⌈n_dead/capacity⌉)·capacity: a full cycle covers every dead latent once."""
    n_dead = jnp.sum(dead, dtype=jnp.int32)
    rank = jnp.cumsum(dead, dtype=jnp.int32) - 1
    period = jnp.maximum((n_dead + capacity - 1) // capacity, 1)
    start = (jnp.asarray(step, jnp.int32) % period) * capacity
    chosen = dead & (rank >= start) & (rank < start + capacity)
    ids = jnp.nonzero(chosen, size=capacity, fill_value=0)[0].astype(jnp.int32)
    valid = jnp.arange(capacity) < jnp.sum(chosen, dtype=jnp.int32)
    return ids, valid


def preact_slots(pre_acts: Float[Array, "B F"], ids: Int[Array, " C"], mesh: Mesh | None) -> Float[Array, "B C"]:
    """pre_acts[:, ids], taken row by row (each row's C entries, the result row-major): `jnp.take`
    of whole columns writes them as [C, B] and every reader of the result fused a transpose back:
    2.6× slower side by side (on a loaded machine) at B 4,096, F 16,384, C 1,024 with three
    readers, as AuxK has (BENCHMARKS.md, "Seventh session"). Split over `model`, each shard reads
    its own slots from its own block of z (`dead_slots`)."""
    def take(z, rows):
        per_row = jnp.broadcast_to(rows[None, :], (z.shape[0], rows.shape[0]))
        return jnp.take_along_axis(z, per_row, axis=1, mode="promise_in_bounds")

    if model_size(mesh) == 1:
        return take(pre_acts, ids)
    return jax.shard_map(lambda z, ids_: take(z, _local_rows(ids_, z.shape[1])), mesh=mesh,
                         in_specs=(P(DATA, MODEL), P(MODEL)), out_specs=P(DATA, MODEL))(pre_acts, ids)


def selection_mask(z_slots: Float[Array, "B C"], valid: Bool[Array, " C"], k_aux: int,
                   mesh: Mesh | None) -> Bool[Array, "B C"]:
    """Which slots are among each row's k_aux largest valid pre-activations (ties: lower slot, i.e.
    lower feature id), the set lax.top_k over the valid slots picks. With k_aux ≥ C every valid slot
    is. A counting search for each row's k_aux-th largest value (sae/row_topk.py) instead of
    lax.top_k, which XLA:CPU runs as a single-threaded partial sort 4–5× slower."""
    n_slots = z_slots.shape[1]
    if k_aux >= n_slots:
        return jnp.broadcast_to(valid[None, :], z_slots.shape)
    m = model_size(mesh)
    rows_per_device = z_slots.shape[0] // (1 if mesh is None else mesh.shape[DATA])
    if m == 1 or rows_per_device % m == 0:
        return row_topk.topk_mask(z_slots, valid, k_aux, mesh, m)
    return _selection_mask_by_top_k(z_slots, valid, k_aux, mesh)


def _selection_mask_by_top_k(z_slots, valid, k_aux, mesh):
    """lax.top_k per model shard and over the gathered candidates (sharded_ops.global_topk), for
    row counts the all-to-all of row_topk cannot split evenly over `model`."""
    masked = jnp.where(valid[None, :], lax.stop_gradient(z_slots), -jnp.inf)
    _, positions = sharded_ops.global_topk(masked, k_aux, mesh)

    def mark(pos, valid_block):
        n_local = valid_block.shape[0]
        offset = lax.axis_index(MODEL) * n_local
        rows = jnp.arange(pos.shape[0])[:, None]
        local = pos - offset
        # Positions on other shards become n_local, out of range, which mode="drop" ignores
        # (a negative index would wrap around instead).
        local = jnp.where((local >= 0) & (local < n_local), local, n_local)
        mask = jnp.zeros((pos.shape[0], n_local), bool).at[rows, local].set(True, mode="drop")
        # Rows with fewer than k_aux valid slots pick padded (-inf) ones too: drop them.
        return mask & valid_block[None, :]

    return jax.shard_map(mark, mesh=mesh, in_specs=(P(DATA, None), P(MODEL)), out_specs=P(DATA, MODEL))(
        positions, valid
    )


@jax.custom_vjp
def slot_preacts(x: Float[Array, "B d"], W_enc: Float[Array, "d C"], bias: Float[Array, " C"],
                 z_slots: Float[Array, "B C"]) -> Float[Array, "B C"]:
    """x W_enc + bias, read from the slots of the pre-activations the forward pass already computed
    (`z_slots`, equal to it): one B·C·d matmul fewer. Backward: dW = xᵀ g, d bias = Σ_b g (x is
    data and gets none)."""
    return z_slots


def _slot_preacts_fwd(x, W_enc, bias, z_slots):
    # W_enc's dtype only, as a scalar: keeping the gathered [d, C] weights as a residual would make
    # every other branch of AuxK's buffer switch fill one of its size with zeros on each step.
    return z_slots, (x, jnp.zeros((), W_enc.dtype))


def _slot_preacts_bwd(residuals, g):
    x, dtype_of_w = residuals
    dt = dtype_of_w.dtype
    d_W = jnp.dot(x.T.astype(dt), g.astype(dt), preferred_element_type=jnp.float32)
    return None, d_W.astype(dt), jnp.sum(g, axis=0), None


slot_preacts.defvjp(_slot_preacts_fwd, _slot_preacts_bwd)


def _slot_params(params, ids: Int[Array, " C"], mesh: Mesh | None) -> tuple[Array, Array, Array]:
    """The buffer's encoder columns [d_in, C], decoder rows [C, d_out] and encoder biases [C], the
    slot axis split over `model`; each shard takes its own slots from its own block."""
    if model_size(mesh) == 1:
        return (jnp.take(params.W_enc, ids, axis=1), jnp.take(params.W_dec, ids, axis=0),
                jnp.take(params.b_enc, ids, axis=0))

    def local(W_enc, W_dec, b_enc, ids_):
        rows = _local_rows(ids_, W_dec.shape[0])
        return jnp.take(W_enc, rows, axis=1), jnp.take(W_dec, rows, axis=0), jnp.take(b_enc, rows, axis=0)

    specs = (P(None, MODEL), P(MODEL, None), P(MODEL))
    return jax.shard_map(local, mesh=mesh, in_specs=specs + (P(MODEL),), out_specs=specs)(
        params.W_enc, params.W_dec, params.b_enc, ids)


def _local_rows(ids: Int[Array, " c"], n_local: int) -> Int[Array, " c"]:
    """This `model` shard's slot ids as rows of its block of features (`dead_slots` gives every
    shard ids of its own block; an id past the block, as the padding's F, stays past it)."""
    return ids - lax.axis_index(MODEL) * n_local


def _aux_k_on_slots(slots, b_dec, ids, valid, x, residual, cfg: SAEConfig, mesh: Mesh | None,
                    pre_acts) -> tuple[Float[Array, ""], Int[Array, ""]]:
    """AuxK on the buffer's gathered parameters `slots` (`_slot_params`): the normalised error and
    how many of the buffer's dead latents were picked with a nonzero derivative."""
    from jaxdict.sae.forward import constrain_sharding, uses_pre_encoder_bias

    W_enc, W_dec, bias = slots
    k_aux = cfg.effective_aux_k
    cdt = jnp.dtype(cfg.compute_dtype)
    if uses_pre_encoder_bias(cfg):
        bias = bias - b_dec @ W_enc  # (x − b_dec) W + b, folded as in forward.py
    if pre_acts is None or not row_topk.runs_on_cpu(mesh):
        # Off the CPU the B·C·d matmul is cheap and the row gather from z is not: compiled for TPU
        # v5p (`jaxdict plan`, XLA's cost analysis), the step that read the slots moved 388 GB of
        # HBM against 78 GB recomputing them (d 2,304, F 131,072, B 4,096, one chip) and 221 against
        # 62 GB split over 16 chips (F 2^20, B 8,192); BENCHMARKS.md, "Ninth session". On XLA:CPU
        # the matmul is the cost: reading measured cheaper on one device ("Seventh session") and
        # no slower on 2×4 (1.001 side by side, "Ninth session").
        z = jnp.dot(x.astype(cdt), W_enc.astype(cdt), preferred_element_type=jnp.float32) + bias
    else:
        z_slots = preact_slots(lax.stop_gradient(pre_acts), ids, mesh)
        z = slot_preacts(x.astype(jnp.float32), W_enc, bias, z_slots)
    z = constrain_sharding(z, mesh, P(DATA, MODEL))
    picked = selection_mask(z, valid, k_aux, mesh)
    live = picked & (z > 0) if cfg.aux_relu else picked
    f = jnp.where(live, z, jnp.zeros_like(z))
    e_hat = jnp.dot(f.astype(cdt), W_dec.astype(cdt), preferred_element_type=jnp.float32)
    err = jnp.sum(jnp.square(residual - e_hat))
    # ‖e − ē‖²: the error of predicting the mean residual, AuxK's normaliser.
    baseline = jnp.sum(jnp.square(residual - jnp.mean(residual, axis=0, keepdims=True)))
    reached = jnp.sum(jnp.any(live, axis=0) & valid, dtype=jnp.int32)
    return err / jnp.maximum(baseline, 1e-12), reached


def dead_slots(dead: Bool[Array, " F"], capacity: int, step: Int[Array, ""],
               mesh: Mesh | None) -> tuple[Int[Array, " C"], Bool[Array, " C"]]:
    """`select_dead`: the buffer's feature ids and which slots hold one. Split over `model`, each
    shard runs it on its own block of the dead mask for its own capacity/m slots (ids of its own
    features, in order, so the slots run in feature order shard by shard, the order lax.top_k
    breaks ties by). No collective: gathering the sharded slots from whichever shard owned each
    id took a psum-scatter of their weights and an all-gather of their gradients on every step,
    and the mask's cumulative sum two all-gathers of [F] and three all-reduces."""
    m = model_size(mesh)
    if m == 1:
        return select_dead(dead, capacity, step)

    def local(block, step_):
        rows, valid = select_dead(block, capacity // m, step_)
        return rows + lax.axis_index(MODEL) * block.shape[0], valid

    return jax.shard_map(local, mesh=mesh, in_specs=(P(MODEL), P()), out_specs=(P(MODEL), P(MODEL)))(dead, step)


def _aux_k_at_capacity(capacity: int, params, x, residual, dead, step, cfg: SAEConfig, mesh: Mesh | None,
                       pre_acts) -> tuple[Float[Array, ""], Int[Array, ""]]:
    """AuxK with a buffer of `capacity` slots (something is dead)."""
    ids, valid = dead_slots(dead, capacity, step, mesh)
    return _aux_k_on_slots(_slot_params(params, ids, mesh), params.b_dec, ids, valid, x, residual, cfg, mesh,
                           pre_acts)


def pad_slots(a: Array, axis: int, capacity: int, m: int, fill=0) -> Array:
    """A slot axis of C slots (split over `model` in m blocks of C/m) padded to `capacity` slots with
    `fill` at the end of every block, so slot i of block s keeps its block: the padded arrays of
    every buffer size line up, and a sharded array is padded where it lives."""
    n = a.shape[axis]
    if n == capacity:
        return a
    blocks = a.reshape(a.shape[:axis] + (m, n // m) + a.shape[axis + 1:])
    widths = [(0, 0)] * blocks.ndim
    widths[axis + 1] = (0, (capacity - n) // m)
    padded = jnp.pad(blocks, widths, constant_values=fill)
    return padded.reshape(a.shape[:axis] + (capacity,) + a.shape[axis + 1:])


def add_slot_gradients(grads, d_slots: tuple[Array, Array, Array], ids: Int[Array, " C"], mesh: Mesh | None):
    """grads + the slot gradients (d W_enc [d_in, C], d W_dec [C, d_out], d b_enc [C]) added at the
    feature ids `ids` (ids ≥ the feature count are dropped), in place: the transpose of
    `_slot_params`. Sharded, each shard adds its own slots to its own block."""
    d_W_enc, d_W_dec, d_b_enc = d_slots
    if model_size(mesh) == 1:
        return grads.replace(W_enc=grads.W_enc.at[:, ids].add(d_W_enc.astype(grads.W_enc.dtype), mode="drop"),
                             W_dec=grads.W_dec.at[ids].add(d_W_dec.astype(grads.W_dec.dtype), mode="drop"),
                             b_enc=grads.b_enc.at[ids].add(d_b_enc.astype(grads.b_enc.dtype), mode="drop"))

    def local(W_enc, W_dec, b_enc, g_W_enc, g_W_dec, g_b_enc, ids_):
        rows = _local_rows(ids_, W_dec.shape[0])  # the padding's F lands past every block: dropped
        return (W_enc.at[:, rows].add(g_W_enc.astype(W_enc.dtype), mode="drop"),
                W_dec.at[rows].add(g_W_dec.astype(W_dec.dtype), mode="drop"),
                b_enc.at[rows].add(g_b_enc.astype(b_enc.dtype), mode="drop"))

    specs = (P(None, MODEL), P(MODEL, None), P(MODEL))
    W_enc, W_dec, b_enc = jax.shard_map(local, mesh=mesh, in_specs=specs + specs + (P(MODEL),), out_specs=specs)(
        grads.W_enc, grads.W_dec, grads.b_enc, d_W_enc, d_W_dec, d_b_enc, ids)
    return grads.replace(W_enc=W_enc, W_dec=W_dec, b_enc=b_enc)


def _counts(dead, reached) -> dict[str, Array]:
    return {"aux_dead_latents": jnp.sum(dead, dtype=jnp.float32), "aux_grad_latents": reached.astype(jnp.float32)}


def aux_k_loss(
    params, x: Float[Array, "B d"], residual: Float[Array, "B d"], dead: Bool[Array, " F"],
    step: Int[Array, ""], demand: Int[Array, ""], cfg: SAEConfig, mesh: Mesh | None,
    pre_acts: Float[Array, "B F"] | None = None,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """AuxK: reconstruct the (detached) residual e = x − x̂ from each token's k_aux largest dead
    latents. Returns ‖e − ê‖² / ‖e − ē‖² summed over the batch (1 for the trivial prediction ê = ē,
    OpenAI's normalized_mse) and counts: `aux_dead_latents` (dead at this step) and
    `aux_grad_latents` (dead latents picked for some token with a nonzero derivative, i.e. that
    receive an AuxK gradient).

    `demand` picks the buffer size (`buffer_demand`; over a sweep axis, of all its members, so
    that under vmap the lax.switch stays a switch: with nothing dead anywhere the step skips AuxK).
    `pre_acts`: the forward pass's z [B, F] (x W_enc + b_enc − b_dec W_enc), whose slots are read
    instead of recomputed on XLA:CPU; None, or another platform, recomputes them.

    Differentiable; the train step takes its gradient with `add_aux_k_gradient` instead, which
    keeps autodiff out of the buffer switch."""
    sizes = dead_buffer_sizes(cfg, mesh)

    def with_buffer(capacity):
        return lambda _: _aux_k_at_capacity(capacity, params, x, residual, dead, step, cfg, mesh, pre_acts)

    def nothing_dead(_):
        return jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)

    branches = [nothing_dead] + [with_buffer(c) for c in sizes]
    loss, reached = lax.switch(bucket_index(demand, sizes), branches, None)
    return loss, _counts(dead, reached)


def add_aux_k_gradient(
    grads, params, x: Float[Array, "B d"], residual: Float[Array, "B d"], dead: Bool[Array, " F"],
    step: Int[Array, ""], demand: Int[Array, ""], cfg: SAEConfig, mesh: Mesh | None,
    pre_acts: Float[Array, "B F"] | None, weight: Float[Array, ""],
) -> tuple[Any, Float[Array, ""], dict[str, Array]]:
    """`grads` + ∂(weight · aux_k_loss)/∂params, aux_k_loss's value and counts: the same numbers as
    differentiating `aux_k_loss`, with each branch of the buffer switch taking its own gradient.

    Differentiated through, lax.switch makes every branch's forward return the residuals of all
    branches (zero-filled for the others') and runs a transposed switch with full-size zero
    cotangents: measured 12–14 % of a 2×4 sparse TopK step at d 640, F 16,384, B 4,096, with or
    without dead latents (BENCHMARKS.md, "AuxK"). Here the switch is outside autodiff, and only
    slot-sized gradients leave it: every branch returns the gradients of its gathered slots, padded
    to the largest buffer (`pad_slots`), with their feature ids, and one scatter-add outside the
    switch puts them onto `grads` (`add_slot_gradients`). A branch that took and returned the [d, F]
    gradients copied them even with nothing dead (W_enc's with a transpose; seen in the compiled
    sweep step's HLO, BENCHMARKS.md, "Quiet runs")."""
    sizes = dead_buffer_sizes(cfg, mesh)
    capacity, m = sizes[-1], model_size(mesh)
    n_features = params.W_enc.shape[1]

    def with_buffer(size):
        def run(_):
            ids, valid = dead_slots(dead, size, step, mesh)

            def weighted(slots, b_dec):
                loss, reached = _aux_k_on_slots(slots, b_dec, ids, valid, x, residual, cfg, mesh, pre_acts)
                return weight * loss, (loss, reached)

            (_, (loss, reached)), (d_slots, d_b_dec) = jax.value_and_grad(weighted, argnums=(0, 1), has_aux=True)(
                _slot_params(params, ids, mesh), params.b_dec)
            d_W_enc, d_W_dec, d_b_enc = d_slots
            padded = (pad_slots(d_W_enc, 1, capacity, m), pad_slots(d_W_dec, 0, capacity, m),
                      pad_slots(d_b_enc, 0, capacity, m),
                      pad_slots(jnp.where(valid, ids, n_features), 0, capacity, m, fill=n_features))
            return padded, d_b_dec, loss, reached

        return run

    def nothing_dead(_):
        d, dt = params.W_enc.shape[0], params.W_enc.dtype
        padded = (jnp.zeros((d, capacity), dt), jnp.zeros((capacity, params.W_dec.shape[1]), params.W_dec.dtype),
                  jnp.zeros((capacity,), params.b_enc.dtype), jnp.full((capacity,), n_features, jnp.int32))
        return padded, jnp.zeros_like(params.b_dec), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)

    branches = [nothing_dead] + [with_buffer(c) for c in sizes]
    (d_W_enc, d_W_dec, d_b_enc, ids), d_b_dec, loss, reached = lax.switch(
        bucket_index(demand, sizes), branches, None)
    grads = add_slot_gradients(grads, (d_W_enc, d_W_dec, d_b_enc), ids, mesh)
    grads = grads.replace(b_dec=grads.b_dec + d_b_dec.astype(grads.b_dec.dtype))
    return grads, loss, _counts(dead, reached)
