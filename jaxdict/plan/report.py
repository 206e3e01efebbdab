"""Plain-text plans: memory against HBM, FLOPs, collectives, roofline, input bandwidth, top-k."""
from __future__ import annotations

from collections import defaultdict

from jaxdict.plan.analysis import Memory, ProgramCost
from jaxdict.plan.chips import GiB, Chip, Topology
from jaxdict.plan.roofline import Roofline, host_input_bandwidth

# `jaxdict bench loader` on this project's 2-core CPU (BENCHMARKS.md, "Activation loader"): global
# jax.Array batches from a page-cached store, the low end of the measured ranges, per host.
LOADER_BYTES_PER_S = {"bfloat16": 0.60e9, "float32": 0.85e9}


def topology_line(topo: Topology) -> str:
    c = topo.chip
    slices = f", {topo.num_slices} slices" if topo.num_slices > 1 else ""
    return f"{topo.name}: {topo.n_chips} × {c.name}{slices}, {topo.hosts} host(s)"


def chip_line(chip: Chip, compute_dtype: str) -> str:
    return (f"{chip.name}: {chip.peak_flops(compute_dtype) / 1e12:.0f} TFLOP/s ({compute_dtype}), "
            f"{chip.hbm_bytes / GiB:.1f} GiB HBM at {chip.hbm_bw / 1e9:.0f} GB/s, ICI {chip.ici_bw / 1e9:.0f} GB/s "
            f"bidirectional; source: {chip.source}")


def memory_lines(m: Memory) -> list[str]:
    rows = [*m.parts.items(), ("temporaries", m.temporaries), ("outputs not aliased", m.outputs_not_aliased),
            ("generated code", m.code)]
    out = ["per-device memory:"]
    out += [f"  {name:<22}{v / GiB:10.3f} GiB" for name, v in rows]
    other_args = m.arguments - sum(m.parts.values())
    if abs(other_args) > 1 << 20:
        out.append(f"  {'(arguments, padding)':<22}{other_args / GiB:10.3f} GiB")
    pct = 100 * m.peak / m.hbm
    out.append(f"  {'total':<22}{m.peak / GiB:10.3f} GiB of {m.hbm / GiB:.2f} GiB HBM ({pct:.0f} %), "
               f"headroom {m.headroom / GiB:.2f} GiB")
    return out


def collective_lines(cost: ProgramCost) -> list[str]:
    groups: dict[tuple, list] = defaultdict(list)
    for u in cost.collectives:
        groups[(u.collective.op, u.collective.group_size, u.crosses_slices)].append(u.collective)
    if not groups:
        return ["collectives: none"]
    out = ["collectives per step (per device; a collective inside a loop is counted once):"]
    for (op, n, dcn), cs in sorted(groups.items(), key=lambda kv: -sum(c.wire_bytes for c in kv[1])):
        out.append(f"  {op:<19} ×{len(cs):<3} over {n:>4} devices{' (DCN)' if dcn else ''}: "
                   f"{sum(c.result_bytes for c in cs) / 1e6:10.2f} MB, on the wire {sum(c.wire_bytes for c in cs) / 1e6:10.2f} MB")
    return out


def sort_lines(cost: ProgramCost, chip: Chip) -> list[str]:
    if not cost.sorts:
        return []
    out = ["sorts and top-k (HBM traffic by the model in jaxdict/plan/hlo.py):"]
    for s in cost.sorts:
        k = f" k={s.k}" if s.k else ""
        out.append(f"  {s.op:<11} row {s.row_length:>8}{k:<7} operand {s.operand_bytes / 1e6:9.2f} MB, "
                   f"{s.passes:5.1f} passes → {s.hbm_bytes / 1e9:7.3f} GB, {1e3 * s.hbm_bytes / chip.hbm_bw:8.3f} ms")
    return out


def roofline_lines(r: Roofline, flops_model: float | None = None, n_devices: int = 1,
                   flops_source: str = "DESIGN.md §7") -> list[str]:
    out = [f"roofline per step: compute {1e3 * r.compute_s:.3f} ms, HBM {1e3 * r.memory_s:.3f} ms "
           f"(of which sort/top-k {1e3 * r.sort_s:.3f} ms), ICI {1e3 * r.ici_s:.3f} ms, DCN {1e3 * r.dcn_s:.3f} ms",
           f"  step ≈ {1e3 * r.step_s:.3f} ms ({r.bound}-bound) → {r.tokens_per_s:,.0f} tokens/s, "
           f"{r.hours_per_billion_tokens:.3f} h per 1B tokens"]
    if flops_model:
        out.insert(0, f"FLOPs per device per step: model {flops_model / n_devices:.3e} ({flops_source})")
    return out


def input_lines(r: Roofline, topo: Topology, d_in: int, store_dtype: str, loader_rate: float | None) -> list[str]:
    bytes_per = 2 if store_dtype == "bfloat16" else 4
    need = host_input_bandwidth(r.tokens_per_s, d_in, bytes_per, topo.hosts)
    rate = loader_rate or LOADER_BYTES_PER_S[store_dtype]
    verdict = "the loader keeps up" if rate >= need else (
        f"LOADER-BOUND: the step would wait; at {rate / 1e9:.2f} GB/s per host it runs at "
        f"{r.tokens_per_s * rate / need:,.0f} tokens/s — add read threads or hosts, or store bf16")
    return [f"input: each of {topo.hosts} host(s) reads {need / 1e9:.3f} GB/s of {store_dtype} activations; "
            f"`jaxdict bench loader` measured {rate / 1e9:.2f} GB/s per host → {verdict}"]
