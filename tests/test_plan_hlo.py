"""The planner's parts that need no TPU compiler: HLO parsing, chip table, roofline arithmetic and
the emulated approx_max_k."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdict.plan import hlo
from jaxdict.plan.analysis import CollectiveUse, Memory, ProgramCost
from jaxdict.plan.approx_topk import approx_topk_indices, recall, reduction_output_size
from jaxdict.plan.chips import CHIPS, parse_topology
from jaxdict.plan.roofline import roofline
from jaxdict.sae.config import ConfigError

HLO = """
HloModule m
  %p0 = f32[64,1024]{1,0} parameter(0)
  %x = bf16[128,256]{1,0} parameter(1)
  %ag = f32[64,4096]{1,0} all-gather(f32[64,1024]{1,0} %p0), channel_id=1, replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={1}
  %ars = (bf16[128,256]{1,0}, bf16[128,256]{1,0}) all-reduce-start(%x), replica_groups=[4,2]<=[8], to_apply=%add
  %ard = bf16[128,256]{1,0} all-reduce-done(%ars)
  %rs = f32[16,64]{1,0} reduce-scatter(f32[128,64]{1,0} %g), replica_groups=[2,4]<=[4,2]T(1,0), dimensions={0}
  %one = f32[8]{0} all-reduce(f32[8]{0} %y), replica_groups={{0},{1},{2},{3},{4},{5},{6},{7}}
  %cp = f32[32]{0} collective-permute(f32[32]{0} %z), source_target_pairs={{0,1},{1,0}}
  %z0 = f32[512,65536]{1,0} fusion(%p0), kind=kLoop
  %top = (f32[512,64]{1,0}, s32[512,64]{1,0}) custom-call(%z0), custom_call_target="TopK"
  %s = (f32[512,128]{1,0}, s32[512,128]{1,0}) sort(f32[512,128]{1,0} %a, s32[512,128]{1,0} %b), dimensions={1}, to_apply=%cmp
"""


def test_a_conditional_counts_only_its_costliest_branch(devices):
    """A lax.switch runs one branch per step: its sorts and collectives are those of the branch with
    the most traffic, not the sum of all (the AuxK buffer switch of the TopK step)."""
    from jax import lax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(devices), ("x",))

    def step(i, x):
        def small(x):
            return jnp.sort(x[:, :64], axis=1).sum()

        def large(x):
            return jnp.sort(x, axis=1).sum() + jnp.sum(jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P())))

        return lax.switch(i, [small, large], x)

    x = jax.device_put(np.ones((8, 1024), np.float32), NamedSharding(mesh, P(None, "x")))
    text = jax.jit(step).lower(1, x).compile().as_text()
    assert "conditional(" in text and text.count(" sort(") >= 2  # both branches are in the program
    rows = sorted(op.row_length for op in hlo.parse_sorts(text) if op.op == "sort")
    assert 64 not in rows and 1024 in rows  # only the large branch's sort
    flat = [op.row_length for op in hlo._sorts_in(text.splitlines(), hlo._symbols(text)) if op.op == "sort"]
    assert 64 in flat  # what summing every line would have counted


def test_shape_bytes_sums_tuples_and_dtypes():
    assert hlo.shape_bytes("(f32[2,3]{1,0}, bf16[4]{0})") == 2 * 3 * 4 + 4 * 2
    assert hlo.shape_bytes("pred[10]") == 10


def test_collectives_bytes_groups_and_wire_bytes():
    found = hlo.parse_collectives_with_groups(HLO, 8)
    by_op = {c.op: (c, g) for c, g in found}
    assert set(by_op) == {"all-gather", "all-reduce", "reduce-scatter", "collective-permute"}  # one-device groups dropped
    ag, groups = by_op["all-gather"]
    assert (ag.result_bytes, ag.group_size, groups) == (64 * 4096 * 4, 4, [[0, 1, 2, 3], [4, 5, 6, 7]])
    assert ag.wire_bytes == ag.result_bytes * 3 / 4
    ar, groups = by_op["all-reduce"]  # async start: the result equals the operand (bf16[128,256])
    assert (ar.result_bytes, ar.group_size, groups[0]) == (128 * 256 * 2, 2, [0, 1])
    assert ar.wire_bytes == 2 * ar.result_bytes * 1 / 2
    rs, groups = by_op["reduce-scatter"]
    assert groups == [[0, 2, 4, 6], [1, 3, 5, 7]]  # iota [4,2] transposed, split into 2 groups of 4
    assert rs.wire_bytes == rs.result_bytes * 3
    assert by_op["collective-permute"][0].wire_bytes == 32 * 4


def test_sorts_resolve_operands_by_name_and_price_passes():
    sorts = hlo.parse_sorts(HLO)
    top, full = sorts
    assert (top.op, top.row_length, top.k, top.operand_bytes) == ("topk", 65536, 64, 512 * 65536 * 4)
    assert (full.op, full.row_length, full.k) == ("sort", 128, None)
    assert full.passes == 7 * 8 / 2  # bitonic sort of 128: log2 = 7 stages
    assert top.passes == 6 * 7 / 2 + 2 * 7  # bitonic top-64
    approx = hlo.SortOp("approx-topk", 100.0, 1024, 64)
    assert approx.hbm_bytes == 100.0  # one read


def test_parse_topology_and_errors():
    t = parse_topology("v5e:4x4")
    assert (t.n_chips, t.chip.hbm_bytes, t.hosts) == (16, 16 * 2**30, 2)
    t = parse_topology("v5p:2x2x4*2")
    assert (t.n_chips, t.num_slices, t.chip.name) == (32, 2, "TPU v5p")
    for bad, word in (("v9:2x2", "v4, v5e"), ("v5e:2x2x2", "2 dimensions"), ("v5e", "CHIP:AxB")):
        with pytest.raises(ConfigError, match=word):
            parse_topology(bad)


def test_roofline_sums_memory_and_network_over_compute():
    chip = CHIPS["v5e"]
    mem = Memory({"params": 1.0}, 1.0, 0.0, 0.0, 0.0, chip.hbm_bytes)
    ag = hlo.Collective("all-gather", 2e9, 2, "")
    cost = ProgramCost(mem, flops=197e12 * 0.010, bytes_accessed=819e9 * 0.004,
                       collectives=[CollectiveUse(ag, False)], sorts=[])
    r = roofline(cost, chip, "bfloat16", tokens_per_step=8192)
    assert r.compute_s == pytest.approx(0.010)
    assert r.memory_s == pytest.approx(0.004)
    assert r.ici_s == pytest.approx(1e9 / 200e9)  # (n−1)/n of 2 GB over half the 400 GB/s
    assert r.step_s == pytest.approx(0.015)
    assert r.bound == "compute"
    assert r.hours_per_billion_tokens == pytest.approx(1e9 / (8192 / 0.015) / 3600)


@pytest.mark.parametrize("n,k,r", [(65536, 64, 0.95), (16384, 32, 0.9), (1 << 20, 64, 0.95), (4096, 128, 0.99),
                                   (100, 8, 0.9), (262144, 1024, 0.8)])
def test_reduction_size_matches_xla(n, k, r):
    """Our copy of XLA's bin count equals what jax's approx_max_k reports for its TPU output."""
    x = jax.ShapeDtypeStruct((2, n), np.float32)
    shape = jax.eval_shape(lambda a: jax.lax.approx_max_k(a, k, recall_target=r, aggregate_to_topk=False), x)
    assert reduction_output_size(n, k, r)[0] == shape[0].shape[1]


def test_emulated_approx_topk_recall():
    x = np.random.default_rng(0).standard_normal((128, 32768)).astype(np.float32)
    # exact when no reduction is asked for; the bin maxima are real elements of the row
    exact = np.sort(np.argsort(-x, axis=1)[:, :64], axis=1)
    assert np.array_equal(np.sort(approx_topk_indices(x, 64, 1.0), axis=1), exact)
    idx = approx_topk_indices(x, 64, 0.9)
    assert np.all(np.take_along_axis(x, idx, axis=1) > -np.inf)
    hi, lo = recall(x, 64, 0.95), recall(x, 64, 0.8)
    assert 0.95 <= hi < 1.0  # the bin count is chosen for at least the target on random rows
    assert 0.8 <= lo < hi
