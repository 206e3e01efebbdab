"""Roofline time of one step from its per-device cost and the chip's data sheet (jaxdict/plan/chips.py).

    compute  = FLOPs / peak FLOP/s (for the step's compute dtype)
    memory   = (HBM bytes of the cost analysis + the sort/top-k traffic model) / HBM bandwidth
    network  = Σ collective wire bytes / (ICI bandwidth / 2)  (+ the same over DCN for collectives
               whose groups span slices)
    step     = max(compute, memory) + network

ICI/2: a collective along one mesh axis drives a bidirectional ring, i.e. half of the chip's
bidirectional ICI figure per direction — the ratio of each TPU page's "all-reduce bandwidth per
pod" to its per-chip ICI. Collectives are taken as not overlapped with compute: XLA's async
collectives hide some of them, so `network` is an upper bound on their cost.
"""
from __future__ import annotations

import dataclasses

from jaxdict.plan.analysis import ProgramCost
from jaxdict.plan.chips import Chip


@dataclasses.dataclass(frozen=True)
class Roofline:
    compute_s: float
    memory_s: float
    sort_s: float  # the part of memory_s that is sort/top-k traffic
    ici_s: float
    dcn_s: float
    tokens_per_step: int

    @property
    def step_s(self) -> float:
        return max(self.compute_s, self.memory_s) + self.ici_s + self.dcn_s

    @property
    def bound(self) -> str:
        parts = {"compute": self.compute_s, "HBM": self.memory_s, "ICI": self.ici_s, "DCN": self.dcn_s}
        return max(parts, key=parts.get)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_s if self.step_s > 0 else float("inf")

    @property
    def hours_per_billion_tokens(self) -> float:
        return 1e9 / self.tokens_per_s / 3600.0

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "step_s": self.step_s, "bound": self.bound,
                "tokens_per_s": self.tokens_per_s, "hours_per_1b_tokens": self.hours_per_billion_tokens}


def roofline(cost: ProgramCost, chip: Chip, compute_dtype: str, tokens_per_step: int) -> Roofline:
    sort_bytes = cost.sort_bytes
    ici = sum(u.collective.wire_bytes for u in cost.collectives if not u.crosses_slices)
    dcn = sum(u.collective.wire_bytes for u in cost.collectives if u.crosses_slices)
    return Roofline(
        compute_s=cost.flops / chip.peak_flops(compute_dtype),
        memory_s=(cost.bytes_accessed + sort_bytes) / chip.hbm_bw,
        sort_s=sort_bytes / chip.hbm_bw,
        ici_s=ici / (chip.ici_bw / 2),
        dcn_s=dcn / chip.dcn_bw if dcn and chip.dcn_bw else 0.0,
        tokens_per_step=tokens_per_step,
    )


def host_input_bandwidth(tokens_per_s: float, d_in: int, bytes_per_value: int, hosts: int) -> float:
    """Bytes/s of activations each host must read from the store to keep the step fed."""
    return tokens_per_s * d_in * bytes_per_value / max(hosts, 1)
