"""What one compiled, sharded program costs per device: memory (by what holds it), FLOPs, HBM bytes,
collectives and sorts — read from `compiled.memory_analysis()`, `cost_analysis()` and the HLO text.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from jaxdict.plan import hlo
from jaxdict.plan.devices import slice_of


def shard_bytes(tree: Any) -> float:
    """Bytes one device holds of a pytree of ShapeDtypeStructs with shardings (the largest shard:
    uneven splits are padded to it)."""
    total = 0.0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


@dataclasses.dataclass(frozen=True)
class Memory:
    """Per-device bytes. `arguments` is what the compiler reports for all inputs; the named parts
    are computed from the abstract inputs' shardings. `peak` = arguments + outputs not aliased to a
    donated input + temporaries + code (MaxText's accounting of `memory_analysis()`)."""

    parts: dict[str, float]  # e.g. params, opt_state, other state, batch
    arguments: float
    outputs_not_aliased: float
    temporaries: float
    code: float
    hbm: float

    @property
    def peak(self) -> float:
        return self.arguments + self.outputs_not_aliased + self.temporaries + self.code

    @property
    def headroom(self) -> float:
        return self.hbm - self.peak

    @property
    def fits(self) -> bool:
        return self.peak <= self.hbm


@dataclasses.dataclass(frozen=True)
class CollectiveUse:
    collective: hlo.Collective
    crosses_slices: bool  # its groups span several slices: it runs over DCN, not ICI


@dataclasses.dataclass(frozen=True)
class ProgramCost:
    memory: Memory
    flops: float  # per device, from the compiler's cost analysis
    bytes_accessed: float  # per device HBM bytes, from the compiler's cost analysis
    collectives: list[CollectiveUse]
    sorts: list[hlo.SortOp]

    @property
    def sort_bytes(self) -> float:
        return sum(s.hbm_bytes for s in self.sorts)


def _cost_dict(compiled) -> dict[str, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax returned one dict per program
        cost = cost[0] if cost else {}
    return dict(cost or {})


def _crosses_slices(c: hlo.Collective, line_groups: list[list[int]] | None, devices: list) -> bool:
    if not line_groups:
        return False
    by_id = {d.id: d for d in devices}
    group = line_groups[0]
    return len({slice_of(by_id[i]) for i in group if i in by_id}) > 1


def analyse(compiled, parts: dict[str, float], hbm_bytes: float, devices: list) -> ProgramCost:
    """Per-device cost of `compiled` (an SPMD program over `devices`)."""
    mem = compiled.memory_analysis()
    memory = Memory(
        parts=parts,
        arguments=float(mem.argument_size_in_bytes),
        outputs_not_aliased=float(max(mem.output_size_in_bytes - mem.alias_size_in_bytes, 0)),
        temporaries=float(mem.temp_size_in_bytes),
        code=float(mem.generated_code_size_in_bytes),
        hbm=hbm_bytes,
    )
    cost = _cost_dict(compiled)
    text = compiled.as_text()
    multi_slice = len({slice_of(d) for d in devices}) > 1
    uses = []
    for c, groups in hlo.parse_collectives_with_groups(text, len(devices)):
        uses.append(CollectiveUse(c, multi_slice and _crosses_slices(c, groups, devices)))
    return ProgramCost(memory=memory, flops=float(cost.get("flops", 0.0)),
                       bytes_accessed=float(cost.get("bytes accessed", 0.0)), collectives=uses,
                       sorts=hlo.parse_sorts(text))
