"""The device mesh (its axis names and the logical-axis table live in jaxdict.sae.axes)."""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdict.sae.axes import DATA, LOGICAL_AXES, MODEL, spec  # noqa: F401 (re-exported)
from jaxdict.sae.config import ConfigError

# How parameters and optimiser state are stored between steps. "model": features split over the
# model axis, replicated over data (every data row holds a full copy of its model shard). "fsdp":
# features split over model × data, so each device stores 1/devices of the state; the step
# all-gathers the parameters over `data` into the "model" layout it computes in, and the gradients
# go back to the stored layout (ZeRO-3 / FSDP; Rajbhandari et al. 2020).
SHARD_MODES = ("model", "fsdp")
STORED_AXES: dict[str, dict[str, str | tuple[str, ...] | None]] = {
    "model": LOGICAL_AXES,
    "fsdp": {**LOGICAL_AXES, "features": (MODEL, DATA)},
}


def stored_spec(*logical: str | None, shard: str = "model") -> P:
    """PartitionSpec of a state array with these logical axes as sharding mode `shard` stores it."""
    if shard not in STORED_AXES:
        raise ConfigError(f"sharding mode {shard!r}; valid: {', '.join(SHARD_MODES)}")
    table = STORED_AXES[shard]
    return P(*(None if name is None else table[name] for name in logical))


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
        hint = ""
        if devices and devices[0].platform == "cpu":
            # Sharded code can be run (and benchmarked) on one CPU split into fake devices.
            hint = (f"; on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count={data * model} "
                    "splits it into that many devices")
        raise ConfigError(
            f"mesh data×model = {data}×{model} = {data * model} devices, but only {len(devices)} are present{hint}"
        )
    grid = np.asarray(devices[: data * model], dtype=object).reshape(data, model)
    return Mesh(grid, (DATA, MODEL))


def check_divisible(mesh: Mesh, *, batch_size: int, n_features: int, shard: str = "model") -> None:
    """Refuse, before compiling anything, shapes that the mesh cannot split evenly."""
    n_data, n_model = mesh.shape[DATA], mesh.shape[MODEL]
    if shard == "fsdp" and n_features % (n_data * n_model):
        n = n_data * n_model
        raise ConfigError(
            f"n_features {n_features} is not divisible by the mesh's {n} devices, which fsdp splits it over; "
            f"use a multiple of {n}, e.g. {math.ceil(n_features / n) * n}, or mesh.shard=model")
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


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, spec("batch", "d_in"))
