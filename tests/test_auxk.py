"""AuxK among the dead latents (jaxdict/sae/auxk.py): equal to the exact top-k_aux over all dead
latents (ties included), the empty dead set, more dead than the buffer holds, sharded == unsharded,
and a sweep axis that keeps the skip when nothing is dead."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from jaxdict.sae import auxk
from jaxdict.sae.config import SAEConfig
from jaxdict.sae.params import init_params
from jaxdict.train.mesh import batch_sharding, make_mesh, spec
from jaxdict.train.state import param_specs

D_IN, N_FEATURES, BATCH, K_AUX = 16, 64, 16, 6


def make_case(seed: int = 0, tie: bool = False, relu: bool = True, capacity: int = 32):
    cfg = SAEConfig(arch="topk", d_in=D_IN, n_features=N_FEATURES, k=4, aux_k=K_AUX, aux_capacity=capacity,
                    aux_relu=relu)
    params = init_params(cfg, jax.random.PRNGKey(seed))
    params = params.replace(b_enc=jax.random.normal(jax.random.PRNGKey(seed + 7), (N_FEATURES,)) * 0.3,
                            b_dec=jax.random.normal(jax.random.PRNGKey(seed + 8), (D_IN,)) * 0.1)
    if tie:
        # Latents 10, 20, 30 and 40 get the same encoder column and bias: their pre-activations tie
        # exactly on every token, and their decoder rows differ, so which one is picked matters.
        params = params.replace(W_enc=params.W_enc.at[:, [20, 30, 40]].set(params.W_enc[:, [10, 10, 10]]),
                                b_enc=params.b_enc.at[jnp.array([20, 30, 40])].set(params.b_enc[10]))
    x = jax.random.normal(jax.random.PRNGKey(seed + 1), (BATCH, D_IN))
    residual = jax.random.normal(jax.random.PRNGKey(seed + 2), (BATCH, D_IN))
    return cfg, params, x, residual


def reference_loss(params, x, residual, dead, cfg):
    """AuxK written plainly: a top-k_aux over all F columns with the live latents at -inf."""
    z = (x - params.b_dec) @ params.W_enc + params.b_enc
    masked = jnp.where(dead[None, :], jax.lax.stop_gradient(z), -jnp.inf)
    _, idx = jax.lax.top_k(masked, cfg.effective_aux_k)
    rows = jnp.arange(z.shape[0])[:, None]
    picked = jnp.zeros(z.shape, bool).at[rows, idx].set(True) & dead[None, :]
    live = picked & (z > 0) if cfg.aux_relu else picked
    e_hat = jnp.where(live, z, 0.0) @ params.W_dec
    err = jnp.sum(jnp.square(residual - e_hat))
    return err / jnp.sum(jnp.square(residual - jnp.mean(residual, axis=0, keepdims=True)))


def forward_preacts(params, x, mesh, read_preacts):
    """The forward pass's dense z when `read_preacts` (AuxK then reads its slots, as the train step
    does), else None (AuxK recomputes them)."""
    if not read_preacts:
        return None
    pre_acts = x @ params.W_enc + (params.b_enc - params.b_dec @ params.W_enc)
    if mesh is not None:
        pre_acts = jax.lax.with_sharding_constraint(pre_acts, NamedSharding(mesh, spec("batch", "features")))
    return pre_acts


def buffered_loss(params, x, residual, dead, cfg, mesh=None, step=0, read_preacts=False):
    """AuxK through the buffer, differentiable through its switch."""
    loss, _ = auxk.aux_k_loss(params, x, residual, dead, jnp.int32(step), auxk.buffer_demand(dead, mesh),
                              cfg, mesh, pre_acts=forward_preacts(params, x, mesh, read_preacts))
    return loss


def added_loss_and_grads(params, x, residual, dead, cfg, mesh=None, step=0, read_preacts=False):
    """What the train step runs: auxk.add_aux_k_gradient onto gradients of 1 (so an added gradient
    that is wrong anywhere shows), with weight 1; returns the loss and the added part."""
    ones = jax.tree.map(jnp.ones_like, params)
    grads, loss, _ = auxk.add_aux_k_gradient(ones, params, x, residual, dead, jnp.int32(step),
                                             auxk.buffer_demand(dead, mesh), cfg, mesh,
                                             forward_preacts(params, x, mesh, read_preacts), jnp.float32(1.0))
    return loss, jax.tree.map(lambda g: g - 1.0, grads)


# Jitted once per module: tests that share a config (and mesh) reuse the compiled program, the
# dead set being a traced argument.
reference_vg = jax.jit(jax.value_and_grad(reference_loss), static_argnums=(4,))
buffered_vg = jax.jit(jax.value_and_grad(buffered_loss), static_argnums=(4, 5, 6, 7))
added_vg = jax.jit(added_loss_and_grads, static_argnums=(4, 5, 6, 7))


def assert_grads_close(got_g, want_g):
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        np.testing.assert_allclose(getattr(got_g, name), getattr(want_g, name), rtol=1e-4, atol=1e-6,
                                   err_msg=name)


def assert_same_loss_and_grads(cfg, params, x, residual, dead, read_preacts=False):
    want, want_g = reference_vg(params, x, residual, dead, cfg)
    got, got_g = buffered_vg(params, x, residual, dead, cfg, None, 0, read_preacts)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert_grads_close(got_g, want_g)
    added, added_g = added_vg(params, x, residual, dead, cfg, None, 0, read_preacts)
    np.testing.assert_allclose(added, want, rtol=1e-5)
    assert_grads_close(added_g, want_g)
    return got_g


# n_dead: below k_aux (no top-k), a top-k within the buffer, near capacity.
@pytest.mark.parametrize("relu,read_preacts,n_dead", [(True, False, 3), (True, False, 11), (False, False, 29),
                                                      (True, True, 29), (False, True, 11)])
def test_equals_exact_topk_over_dead(relu, read_preacts, n_dead):
    cfg, params, x, residual = make_case(seed=n_dead, relu=relu)
    dead = jnp.zeros(N_FEATURES, bool).at[jax.random.permutation(jax.random.PRNGKey(5), N_FEATURES)[:n_dead]].set(True)
    grads = assert_same_loss_and_grads(cfg, params, x, residual, dead, read_preacts)
    # Only dead latents receive AuxK gradient in their own encoder columns and decoder rows.
    touched = np.asarray(jnp.any(grads.W_dec != 0, axis=1))
    assert touched.any() and not touched[~np.asarray(dead)].any()


def test_ties_go_to_the_lower_feature_id():
    cfg, params, x, residual = make_case(seed=3, tie=True)
    dead = jnp.zeros(N_FEATURES, bool).at[jnp.array([1, 5, 10, 20, 30, 40, 50, 60, 61, 63])].set(True)
    # Make the tied group the largest pre-activations so the tie sits on the k_aux boundary.
    params = params.replace(b_enc=params.b_enc.at[jnp.array([10, 20, 30, 40])].set(50.0))
    cfg_small = dataclasses.replace(cfg, aux_k=2)
    grads = assert_same_loss_and_grads(cfg_small, params, x, residual, dead)
    rows_touched = np.flatnonzero(np.asarray(jnp.any(grads.W_dec != 0, axis=1)))
    assert list(rows_touched) == [10, 20]


def test_empty_dead_set_costs_nothing_and_gives_zero():
    cfg, params, x, residual = make_case()
    dead = jnp.zeros(N_FEATURES, bool)
    loss, grads = buffered_vg(params, x, residual, dead, cfg, None, 0, False)
    assert float(loss) == 0.0
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads))
    counts = jax.jit(lambda *a: auxk.aux_k_loss(*a, cfg, None)[1])(params, x, residual, dead, jnp.int32(0),
                                                                     jnp.int32(0))
    assert float(counts["aux_dead_latents"]) == 0 and float(counts["aux_grad_latents"]) == 0


def test_more_dead_than_the_buffer_holds_rotates_a_window():
    capacity = 8
    dead = jnp.zeros(N_FEATURES, bool).at[jnp.arange(3, 60, 2)].set(True)  # 29 dead, 4 windows
    dead_ids = np.flatnonzero(np.asarray(dead))
    seen = []
    for step in range(4):
        ids, valid = auxk.select_dead(dead, capacity, jnp.int32(step))
        window = np.asarray(ids)[np.asarray(valid)]
        np.testing.assert_array_equal(window, dead_ids[step * capacity:(step + 1) * capacity])
        seen.extend(window)
    assert sorted(seen) == list(dead_ids)  # one cycle covers every dead latent exactly once
    ids5, _ = auxk.select_dead(dead, capacity, jnp.int32(4))
    np.testing.assert_array_equal(np.asarray(ids5), dead_ids[:capacity])
    # The loss on a step equals the exact top-k_aux over that step's window of dead latents.
    cfg, params, x, residual = make_case(capacity=capacity)
    window = jnp.zeros(N_FEATURES, bool).at[jnp.asarray(dead_ids[8:16])].set(True)
    got, _ = buffered_vg(params, x, residual, dead, cfg, None, 1, False)
    np.testing.assert_allclose(got, reference_vg(params, x, residual, window, cfg)[0], rtol=1e-5)


def test_buffer_sizes_and_the_size_a_step_uses():
    cfg = SAEConfig(arch="topk", d_in=D_IN, n_features=1024, k=4, aux_capacity=128)
    sizes = auxk.dead_buffer_sizes(cfg)
    assert sizes == (16, 32, 64, 128)
    assert auxk.dead_buffer_sizes(cfg, make_mesh(1, 8, devices=jax.devices()[:8])) == (16, 32, 64, 128)
    assert auxk.dead_buffer_sizes(SAEConfig(arch="topk", d_in=D_IN, n_features=1024, k=4, aux_capacity=20),
                                  make_mesh(1, 8, devices=jax.devices()[:8])) == (8, 16, 24)
    for n_dead, want in [(0, 0), (1, 1), (16, 1), (17, 2), (128, 4), (999, 4)]:
        assert int(auxk.bucket_index(jnp.int32(n_dead), sizes)) == want, n_dead


def candidates_by_shard(dead: np.ndarray, sizes: tuple[int, ...], m: int, step: int) -> np.ndarray:
    """The dead latents AuxK may pick at `step` with features split in m blocks, written plainly:
    each block fills its own slots, as many as the fullest block needs (from the buffer `sizes`)
    up to the largest size / m; a block with more dead than that takes the window of ranks
    [start, start + slots) among its own, start = (step mod ⌈n/slots⌉)·slots."""
    blocks = dead.reshape(m, -1)
    demand = m * blocks.sum(axis=1).max()
    slots = next((c for c in sizes if c >= demand), sizes[-1]) // m
    out = np.zeros_like(blocks)
    for b, block in enumerate(blocks):
        ids = np.flatnonzero(block)
        start = (step % max(-(-len(ids) // slots), 1)) * slots
        out[b, ids[start:start + slots]] = True
    return out.reshape(-1)


# Features in blocks of 16 (2×4) or 8 (1×8) with 32 slots in all: a block fits 8 or 4 dead
# latents; 27 and 40 dead overflow some blocks (their windows rotate), 5 on 1×8 may not.
@pytest.mark.parametrize("mesh_shape,n_dead", [((1, 1), 27), ((2, 4), 0), ((2, 4), 20), ((2, 4), 27),
                                               ((2, 4), 40), ((1, 8), 5), ((1, 8), 40)])
def test_sharded_equals_exact_topk_over_each_shards_dead(mesh_shape, n_dead):
    """Sharded AuxK (each `model` shard filling its own slots from its own features) equals the
    exact top-k_aux over the candidates `candidates_by_shard` names, ties included; with no shard
    over its slots, that is every dead latent, as unsharded."""
    cfg, params, x, residual = make_case(seed=11, tie=True)
    dead = jnp.zeros(N_FEATURES, bool).at[jax.random.permutation(jax.random.PRNGKey(9), N_FEATURES)[:n_dead]].set(True)
    dead = dead.at[jnp.array([10, 20, 30])].set(n_dead > 0)  # keep the tied latents in play
    n = mesh_shape[0] * mesh_shape[1]
    mesh = make_mesh(*mesh_shape, devices=jax.devices()[:n])
    m = mesh_shape[1]
    chosen = candidates_by_shard(np.asarray(dead), auxk.dead_buffer_sizes(cfg, mesh), m, step=1)
    if n_dead == 20:
        assert chosen.sum() == int(dead.sum()), "20 dead in blocks of 16 should fit their 8 slots"
    if n_dead >= 27 and m > 1:
        assert 0 < chosen.sum() < int(dead.sum()), "some block should overflow and rotate"
    want, want_g = reference_vg(params, x, residual, jnp.asarray(chosen), cfg)
    p_sh = jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(cfg),
                                               is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)))
    sharded = (p_sh, jax.device_put(x, batch_sharding(mesh)), jax.device_put(residual, batch_sharding(mesh)),
               jax.device_put(dead, NamedSharding(mesh, spec("features"))), cfg, mesh, 1)
    for read_preacts in (True, False):
        got, got_g = buffered_vg(*sharded, read_preacts)
        if n_dead == 0:  # the step skips AuxK (the plain reference would score ê = 0)
            assert float(got) == 0.0
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5)
            assert_grads_close(got_g, want_g)
        added, added_g = added_vg(*sharded, read_preacts)
        np.testing.assert_allclose(added, got, rtol=1e-5)
        assert_grads_close(added_g, got_g)


def test_the_fullest_shard_sets_the_buffer_size():
    mesh = make_mesh(2, 4, devices=jax.devices()[:8])
    dead = np.zeros(N_FEATURES, bool)
    dead[[0, 1, 2, 20, 40]] = True  # 3 in the first block of 16, 1 in two others
    assert int(auxk.buffer_demand(jnp.asarray(dead), mesh)) == 4 * 3
    assert int(auxk.buffer_demand(jnp.asarray(dead), None)) == 5
    # A sweep's stacked [members, F]: the fullest block of any member.
    stacked = np.stack([dead, np.roll(dead, 16 * 3)])
    stacked[1, 48:54] = True
    assert int(auxk.buffer_demand(jnp.asarray(stacked), mesh)) == 4 * 6


@pytest.mark.parametrize("arch,mesh_shape", [("topk", (1, 1)), ("topk", (2, 4)), ("batchtopk", (2, 4))])
def test_step_gradient_equals_value_and_grad_of_the_loss(arch, mesh_shape):
    """sae_loss_and_grads (AuxK's gradient added inside its buffer switch) equals jax.value_and_grad
    of sae_loss (differentiated through the switch), on a sparse step with dead latents."""
    from jaxdict.sae.losses import sae_loss, sae_loss_and_grads

    cfg = SAEConfig(arch=arch, d_in=D_IN, n_features=N_FEATURES, k=4, decode="sparse", aux_k=K_AUX,
                    aux_capacity=32)
    params = make_case(seed=13)[1]
    n = mesh_shape[0] * mesh_shape[1]
    mesh = make_mesh(*mesh_shape, devices=jax.devices()[:n])
    params = jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(cfg),
                                                 is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)))
    x = jax.device_put(jax.random.normal(jax.random.PRNGKey(14), (BATCH, D_IN)) * 2.0, batch_sharding(mesh))
    for n_dead in (0, 9, 40):
        dead = jnp.zeros(N_FEATURES, bool).at[jax.random.permutation(jax.random.PRNGKey(n_dead), N_FEATURES)[:n_dead]].set(True)
        dead = jax.device_put(dead, NamedSharding(mesh, spec("features")))
        kw = dict(sparsity_coeff=jnp.float32(0.0), dead=dead, step=jnp.int32(1))
        (want, (_, want_parts)), want_g = jax.jit(
            lambda p, x, kw: jax.value_and_grad(sae_loss, has_aux=True)(p, x, cfg, mesh, **kw))(params, x, kw)
        (got, (_, got_parts)), got_g = jax.jit(lambda p, x, kw: sae_loss_and_grads(p, x, cfg, mesh, **kw))(params, x, kw)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        for key in ("aux_loss", "aux_dead_latents", "aux_grad_latents", "mse"):
            np.testing.assert_allclose(got_parts[key], want_parts[key], rtol=1e-6, err_msg=key)
        assert (float(got_parts["aux_loss"]) > 0) == (n_dead > 0)
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            np.testing.assert_allclose(getattr(got_g, name), getattr(want_g, name), rtol=1e-5, atol=1e-7,
                                       err_msg=f"{name}, {n_dead} dead")


def test_sweep_axis_keeps_the_skip_and_equals_separate_runs(devices):
    """Under the sweep's vmap the buffer size is switched on the largest dead count of the members,
    an unbatched value: the compiled sweep step keeps a real switch (no select over AuxK when
    nothing is dead), and a member with dead latents beside one without trains as it would alone."""
    from jaxdict.train.optim import OptimConfig
    from jaxdict.train.state import add_leading_axis, create_state, state_specs, to_shardings
    from jaxdict.train.step import TrainStep

    cfg = SAEConfig(arch="topk", d_in=D_IN, n_features=N_FEATURES, k=4, decode="sparse", dead_tokens=32,
                    aux_k=K_AUX, aux_capacity=32)
    optim = OptimConfig(lr=1e-2, total_steps=10, adam_eps=1e-4)
    mesh = make_mesh(1, 1, devices=jax.devices()[:1])
    data = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (3, 32, D_IN)))

    def fresh(seed, n_dead):
        state, _ = create_state(cfg, optim, mesh, seed=seed)
        return state.replace(tokens_since_fired=state.tokens_since_fired.at[:n_dead].set(cfg.dead_tokens))

    def alone(seed, n_dead):
        state, shardings = create_state(cfg, optim, mesh, seed=seed)
        step, state = TrainStep(cfg, optim, mesh, shardings, 32), fresh(seed, n_dead)
        for batch in data:
            state, metrics = step(state, batch)
        return jax.device_get(state), jax.device_get(metrics)

    members = [(3, 12), (4, 0)]  # 12 dead latents in the first member, none in the second
    states = [fresh(seed, n) for seed, n in members]
    shardings = to_shardings(mesh, add_leading_axis(state_specs(cfg, optim, states[0])))
    stacked = jax.device_put(jax.tree.map(lambda *x: jnp.stack(x), *states), shardings)
    step = TrainStep(cfg, optim, mesh, shardings, 32, sweep_size=2)
    lowered = step.lower(stacked, data[0])
    assert lowered.as_text().count("stablehlo.case") >= 1
    # Only slot-sized gradients leave AuxK's switch (one branch per buffer size and one for nothing
    # dead): a branch handing the [2, d, F] gradients through copied them on every step.
    compiled = lowered.compile().as_text()
    n_branches = 1 + len(auxk.dead_buffer_sizes(cfg))
    switches = [line for line in compiled.splitlines()
                if " conditional(" in line and line.split("branch_computations={")[1].count("%") == n_branches]
    assert switches, "AuxK's buffer switch is not a conditional in the compiled sweep step"
    for line in switches:
        results = line.split(" conditional(")[0]
        assert f"[2,{D_IN},{N_FEATURES}]" not in results and f"[2,{N_FEATURES},{D_IN}]" not in results, results
        assert f"[2,{D_IN},{cfg.effective_aux_capacity}]" in results, results
    for batch in data:
        stacked, metrics = step(stacked, batch)
    stacked = jax.device_get(stacked)
    for i, (seed, n_dead) in enumerate(members):
        want, want_metrics = alone(seed, n_dead)
        for a, b in zip(jax.tree.leaves(want.params), jax.tree.leaves(stacked.params)):
            np.testing.assert_allclose(b[i], a, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(metrics["aux_loss"][i], want_metrics["aux_loss"], rtol=1e-5)
    assert metrics["aux_loss"][0] > 0  # AuxK did run for the member with dead latents


def test_aux_grad_latents_counts_dead_latents_that_get_a_gradient():
    cfg, params, x, residual = make_case(seed=5)
    dead = jnp.zeros(N_FEATURES, bool).at[jnp.arange(0, 40, 2)].set(True)
    # Half the dead latents can never be positive: a ReLU on AuxK's picks gives them no gradient.
    negative = jnp.arange(0, 40, 4)
    params = params.replace(b_enc=params.b_enc.at[negative].set(-1e3))
    for relu, want_missing in [(True, len(negative)), (False, 0)]:
        c = dataclasses.replace(cfg, aux_relu=relu, aux_k=N_FEATURES // 2)
        loss_fn = lambda p: auxk.aux_k_loss(p, x, residual, dead, jnp.int32(0), jnp.int32(20), c, None)  # noqa: E731
        (_, counts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        got_grad = np.asarray(jnp.any(grads.W_dec != 0, axis=1))
        assert int(counts["aux_dead_latents"]) == 20
        assert int(counts["aux_grad_latents"]) == int(got_grad.sum()) == 20 - want_missing


def test_default_buffer_capacity_is_f_over_8_up_to_its_ceiling():
    from jaxdict.sae.config import AUX_CAPACITY_MAX

    assert SAEConfig(arch="topk", d_in=64, n_features=16384, k=32).effective_aux_capacity == 2048
    # The 16M TopK: F/8 = 2M slots would be a [B, 2M] float32 block on every device.
    assert SAEConfig(arch="topk", d_in=64, n_features=1 << 24, k=32).effective_aux_capacity == AUX_CAPACITY_MAX
    assert SAEConfig(arch="topk", d_in=64, n_features=1 << 24, k=32, aux_capacity=1 << 18).effective_aux_capacity == 1 << 18


@pytest.mark.parametrize("case", ["ties", "half-steps", "normal", "all-equal", "huge", "one"])
def test_selection_mask_equals_lax_top_k_over_the_valid_slots(case, devices):
    """AuxK's pick among the buffer's slots is lax.top_k over the valid slots (ties to the lower
    slot), on one device and with the slots split over a 2x4 mesh's model axis (local top-k, then
    a top-k of the gathered candidates)."""
    from jax import lax

    from jaxdict.sae.auxk import selection_mask

    rng = np.random.default_rng(["ties", "half-steps", "normal", "all-equal", "huge", "one"].index(case))
    B, C = 16, 64
    k = 1 if case == "one" else int(rng.integers(2, 40))
    z = {"ties": rng.integers(-5, 5, size=(B, C)), "half-steps": rng.integers(-5, 5, size=(B, C)) * 0.5,
         "normal": rng.standard_normal((B, C)), "all-equal": np.full((B, C), -3.0),
         "huge": rng.standard_normal((B, C)) * 1e30, "one": rng.standard_normal((B, C))}[case].astype(np.float32)
    valid = rng.random(C) < 0.8
    _, positions = lax.top_k(jnp.asarray(np.where(valid[None, :], z, -np.inf)), k)
    want = np.zeros((B, C), bool)
    want[np.arange(B)[:, None], np.asarray(positions)] = True
    want &= valid[None, :]
    np.testing.assert_array_equal(np.asarray(selection_mask(jnp.asarray(z), jnp.asarray(valid), k, None)), want)
    sharded = jax.jit(lambda a, v: selection_mask(a, v, k, make_mesh(2, 4)))(jnp.asarray(z), jnp.asarray(valid))
    np.testing.assert_array_equal(np.asarray(sharded), want)
