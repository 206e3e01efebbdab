"""The device mesh and the one table that maps logical axes to mesh axes (DESIGN.md §5, point 4)."""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdict.sae.config import ConfigError

DATA, MODEL = "data", "model"

# Logical axis -> mesh axis. Batch over `data`, dictionary features over `model`, d_in replicated.
LOGICAL_AXES: dict[str, str | None] = {"batch": DATA, "features": MODEL, "d_in": None, "sweep": None}


def spec(*logical: str | None) -> P:
    """PartitionSpec for an array whose axes have these logical names (None = replicated)."""
    return P(*(None if name is None else LOGICAL_AXES[name] for name in logical))


def make_mesh(data: int | None = None, model: int = 1, devices: list | None = None) -> Mesh:
    """A `data × model` mesh. `data=None` uses every device not taken by `model`."""
    devices = list(jax.devices() if devices is None else devices)
    if model < 1 or (data is not None and data < 1):
        raise ConfigError(f"mesh data={data}, model={model}: both must be >= 1")
    if data is None:
        if len(devices) % model:
            raise ConfigError(
                f"mesh model={model} does not divide the {len(devices)} devices present; "
                f"valid model sizes: {[m for m in range(1, len(devices) + 1) if len(devices) % m == 0]}"
            )
        data = len(devices) // model
    if data * model > len(devices):
        raise ConfigError(
            f"mesh data×model = {data}×{model} = {data * model} devices, but only {len(devices)} are present"
        )
    grid = np.asarray(devices[: data * model], dtype=object).reshape(data, model)
    return Mesh(grid, (DATA, MODEL))


def check_divisible(mesh: Mesh, *, batch_size: int, n_features: int) -> None:
    """Refuse, before compiling anything, shapes that the mesh cannot split evenly."""
    n_data, n_model = mesh.shape[DATA], mesh.shape[MODEL]
    if batch_size % n_data:
        raise ConfigError(
            f"batch size {batch_size} is not divisible by the mesh's data axis ({n_data}); "
            f"use a multiple of {n_data}, e.g. {math.ceil(batch_size / n_data) * n_data}"
        )
    if n_features % n_model:
        raise ConfigError(
            f"n_features {n_features} is not divisible by the mesh's model axis ({n_model}); "
            f"use a multiple of {n_model}, e.g. {math.ceil(n_features / n_model) * n_model}"
        )


def named(mesh: Mesh, partition: P) -> NamedSharding:
    return NamedSharding(mesh, partition)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, spec("batch", "d_in"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
