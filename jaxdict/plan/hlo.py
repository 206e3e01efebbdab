"""What a compiled (per-device, SPMD-partitioned) HLO module does that the cost analysis hides:
its collectives with their bytes and group sizes, and its sorts / top-k with their operand sizes.

Parsed from `compiled.as_text()`. Lines look like

    %all-gather.3 = f32[640,65536]{1,0} all-gather(f32[640,16384]{1,0} %p), replica_groups={{0,1,2,3}}, ...
    %ars = (f32[8]{0}, f32[8]{0}) all-reduce-start(...), replica_groups=[4,2]<=[8], ...
    %sort.1 = (f32[512,4096]{1,0}, s32[512,4096]{1,0}) sort(...), dimensions={1}, ...
    %topk = (f32[512,64]{1,0}, s32[512,64]{1,0}) topk(f32[512,4096]{1,0} %z), k=64, largest=true

A collective inside a loop body is counted once per appearance, not per trip (the plan says so).
A `conditional` runs one of its branches: of each, only the branch with the most traffic is counted
(the TopK step's AuxK is a lax.switch over four buffer sizes; summing them overstated its sorts).
"""
from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
               "s4": 0.5, "u4": 0.5}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.+?)\s+(?P<op>[a-z][a-z0-9\-]*)\((?P<rest>.*)$")
_SOURCE_TARGET = re.compile(r"source_target_pairs=\{([^}]*)\}")


@dataclasses.dataclass(frozen=True)
class Collective:
    op: str  # one of COLLECTIVES
    result_bytes: float  # per device, of the result (all-gather: the gathered array)
    group_size: int  # devices taking part in each group
    shape: str

    @property
    def wire_bytes(self) -> float:
        """Bytes each device sends on a bidirectional ring (the usual TPU/NCCL algorithm):
        all-gather (n−1)/n of the result; reduce-scatter (n−1)·result; all-reduce 2(n−1)/n;
        all-to-all (n−1)/n; a permute sends its whole operand."""
        n = max(self.group_size, 1)
        if self.op == "all-gather" or self.op == "all-to-all":
            return self.result_bytes * (n - 1) / n
        if self.op == "reduce-scatter":
            return self.result_bytes * (n - 1)
        if self.op == "all-reduce":
            return 2.0 * self.result_bytes * (n - 1) / n
        return self.result_bytes


@dataclasses.dataclass(frozen=True)
class SortOp:
    op: str  # "sort", "topk" or "approx-topk" (a custom call)
    operand_bytes: float  # all operands of the sort (keys and carried values), per device
    row_length: int  # elements along the sorted dimension
    k: int | None

    @property
    def passes(self) -> float:
        """Reads+writes of the whole operand this op makes, as a model (not a measurement):
        sort: a bitonic sort of n elements, log2(n)(log2(n)+1)/2 compare-exchange passes (Batcher
        1968). Exact top-k: bitonic top-k (Shanbhag et al. 2018) — sort runs of k (log2(k)(log2(k)+1)/2
        passes), then merge-and-halve steps of log2(k)+1 passes over a halving array (≤ 2(log2(k)+1)
        full passes). Approximate top-k reads the operand once: it is designed to run at the memory
        roofline (Chern et al. 2022, "TPU-KNN: K Nearest Neighbor Search at Peak FLOP/s")."""
        if self.op == "approx-topk":
            return 0.5  # one read, no write-back of the operand
        if self.op == "sort" or not self.k:
            s = max(1, math.ceil(math.log2(max(self.row_length, 2))))
            return s * (s + 1) / 2
        lk = max(1, math.ceil(math.log2(max(self.k, 2))))
        return lk * (lk + 1) / 2 + 2 * (lk + 1)

    @property
    def hbm_bytes(self) -> float:
        return 2.0 * self.operand_bytes * self.passes


def shape_bytes(shape: str) -> float:
    """Bytes of every array in an HLO shape string (a tuple sums its elements)."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype not in DTYPE_BYTES:
            continue
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * DTYPE_BYTES[dtype]
    return total


def _arrays(shape: str) -> list[tuple[str, list[int]]]:
    return [(t, [int(d) for d in filter(None, dims.split(","))]) for t, dims in _ARRAY.findall(shape)
            if t in DTYPE_BYTES]


def _iota_groups(rest: str) -> list[list[int]] | None:
    """`replica_groups=[G,S]<=[dims]T(perm)`: iota device ids reshaped to dims, transposed, then
    split into G groups of S (XLA's IotaReplicaGroupList)."""
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([0-9,]+)\](?:T\(([0-9,]+)\))?", rest)
    if not m:
        return None
    n_groups, size = int(m.group(1)), int(m.group(2))
    dims = [int(x) for x in m.group(3).split(",")]
    ids = np.arange(math.prod(dims)).reshape(dims)
    if m.group(4):
        ids = ids.transpose([int(x) for x in m.group(4).split(",")])
    return ids.reshape(n_groups, size).tolist()


def replica_groups(rest: str, n_devices: int) -> list[list[int]]:
    """The device groups of a collective's attribute text (all devices when none are given)."""
    m = re.search(r"replica_groups=\{(\{[0-9,{} ]*\})\}", rest)
    if m:
        return [[int(x) for x in g.split(",") if x.strip()] for g in re.findall(r"\{([0-9, ]*)\}", m.group(1))]
    groups = _iota_groups(rest)
    if groups is not None:
        return groups
    m = _SOURCE_TARGET.search(rest)
    if m:
        return [[int(x) for x in pair.split(",")] for pair in re.findall(r"\{(\d+,\d+)\}", "{" + m.group(1) + "}")]
    return [list(range(n_devices))]


def _symbols(hlo_text: str) -> dict[str, str]:
    """Instruction name -> result shape text (compiled HLO names operands without their types)."""
    table = {}
    for line in hlo_text.splitlines():
        m = re.match(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+[a-z][a-z0-9\-]*\(", line)
        if m:
            table[m.group(1)] = m.group(2)
    return table


def _operands(rest: str, symbols: dict[str, str]) -> str:
    """Shape text of the operands of `op(...)`: inline types when printed, else looked up by name."""
    depth, out = 1, []
    for ch in rest:
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            break
        out.append(ch)
    text = "".join(out)
    if _ARRAY.search(text):
        return text
    return " ".join(symbols.get(name, "") for name in re.findall(r"%([\w.\-]+)", text))


_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*->.*\{\s*$")
_CALLEES = re.compile(r"\b(?:calls|to_apply|body|condition)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"\b(?:branch_computations=\{([^}]*)\}|true_computation=%?([\w.\-]+), "
                       r"false_computation=%?([\w.\-]+))")


def computations(hlo_text: str) -> tuple[dict[str, list[str]], str | None]:
    """Computation name -> its instruction lines, and the entry computation's name (None when the
    text is a bare list of instructions)."""
    comps: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        m = _COMPUTATION.match(line)
        if m:
            current = m.group(2)
            comps[current] = []
            entry = current if m.group(1) else entry
        elif line.strip() == "}":
            current = None
        elif current is not None:
            comps[current].append(line)
    return comps, entry


def _on_costliest_path(hlo_text: str, items_in, weight) -> list:
    """items_in(lines) over the computations the entry reaches through calls, taking at each
    conditional only its branch of largest total weight. A computation called from several sites
    counts at each."""
    comps, entry = computations(hlo_text)
    if entry is None:
        return items_in(hlo_text.splitlines())
    memo: dict[str, list] = {}

    def walk(name: str, active: frozenset) -> list:
        if name in memo:
            return memo[name]
        if name not in comps or name in active:
            return []
        lines = comps[name]
        found = list(items_in(lines))
        for line in lines:
            b = _BRANCHES.search(line)
            if b:
                names = re.findall(r"%?([\w.\-]+)", b.group(1)) if b.group(1) else [b.group(2), b.group(3)]
                options = [walk(n, active | {name}) for n in names]
                found += max(options, key=lambda its: sum(weight(i) for i in its), default=[])
            for callee in _CALLEES.findall(line):
                found += walk(callee, active | {name})
        memo[name] = found
        return found

    return walk(entry, frozenset())


def parse_collectives_with_groups(hlo_text: str, n_devices: int) -> list[tuple[Collective, list[list[int]]]]:
    symbols = _symbols(hlo_text)
    return _on_costliest_path(hlo_text, lambda lines: _collectives_in(lines, symbols, n_devices),
                              weight=lambda item: item[0].wire_bytes)


def _instructions(lines: list[str]):
    """The _INSTR match of each instruction line."""
    for line in lines:
        m = _INSTR.match(line)
        if m:
            yield m


def _collectives_in(lines: list[str], symbols: dict[str, str], n_devices: int) -> list[tuple[Collective, list[list[int]]]]:
    found = []
    for m in _instructions(lines):
        op = m.group("op")
        base = op[:-6] if op.endswith("-start") else op
        if base not in COLLECTIVES:
            continue
        shape, rest = m.group("shape"), m.group("rest")
        operand = shape_bytes(_operands(rest, symbols))
        if op.endswith("-start"):
            # An async start returns (operands, results[, context]): its result is the total less
            # the operands (an all-reduce's result equals its operand).
            if not operand and shape.startswith("("):
                operand = shape_bytes(shape) / 2  # (operand, result) of equal size, operand not found
            size = operand if base in ("all-reduce", "collective-permute") else max(shape_bytes(shape) - operand, 0.0)
        else:
            size = shape_bytes(shape)
        groups = replica_groups(rest, n_devices)
        group = 2 if base == "collective-permute" else max(len(g) for g in groups)
        if group <= 1 or size <= 0:
            continue  # a collective over one device moves nothing
        found.append((Collective(base, size, group, shape), groups))
    return found


def parse_collectives(hlo_text: str, n_devices: int) -> list[Collective]:
    return [c for c, _ in parse_collectives_with_groups(hlo_text, n_devices)]


def parse_sorts(hlo_text: str) -> list[SortOp]:
    symbols = _symbols(hlo_text)
    return _on_costliest_path(hlo_text, lambda lines: _sorts_in(lines, symbols), weight=lambda op: op.hbm_bytes)


def _sorts_in(lines: list[str], symbols: dict[str, str]) -> list[SortOp]:
    found = []
    for m in _instructions(lines):
        op, rest = m.group("op"), m.group("rest")
        if op == "custom-call":
            target = re.search(r'custom_call_target="([^"]+)"', rest)
            name = target.group(1).lower() if target else ""
            if name in ("partialreduce", "approxtopk"):
                op = "approx-topk"
            elif name == "topk":
                op = "topk"
            else:
                continue
        if op not in ("sort", "topk", "approx-topk"):
            continue
        operand_text = _operands(rest, symbols)
        operands = _arrays(operand_text)
        if not operands:
            continue
        dims = operands[0][1]
        dim_m = re.search(r"dimensions=\{(\d+)\}", rest)
        axis = int(dim_m.group(1)) if dim_m else len(dims) - 1
        out_dims = _arrays(m.group("shape"))
        k = out_dims[0][1][axis] if op != "sort" and out_dims and len(out_dims[0][1]) > axis else None
        found.append(SortOp(op, shape_bytes(operand_text), dims[axis] if dims else 1, k))
    return found
