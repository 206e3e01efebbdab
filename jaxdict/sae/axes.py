"""The mesh axis names and the one table that maps logical array axes to them (DESIGN.md §5, point 4).

Everything that places or shards an array names its axes here: the batch goes over `data`,
dictionary features over `model`, d_in is replicated. It imports only jax, so the SAE maths, the
loader, the harvester and the trainer can all share it.
"""
from __future__ import annotations

from jax.sharding import PartitionSpec as P

DATA, MODEL = "data", "model"

# Logical axis -> mesh axis (None: replicated).
LOGICAL_AXES: dict[str, str | None] = {"batch": DATA, "features": MODEL, "d_in": None, "d_out": None, "sweep": None}


def spec(*logical: str | None) -> P:
    """PartitionSpec for an array whose axes have these logical names (None = replicated)."""
    return P(*(None if name is None else LOGICAL_AXES[name] for name in logical))
