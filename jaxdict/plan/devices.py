"""TPU devices to compile for, on a machine without TPUs: libtpu's compiler behind
`jax.experimental.topologies.get_topology_desc` (the way MaxText's `train_compile.py` works).

Needs libtpu of exactly the installed jax version: `pip install 'jaxdict[tpu]'`. It works with
JAX_PLATFORMS=cpu set (the test suite's setting): the topology's devices are never executed on.
"""
from __future__ import annotations

import functools
import os

from jaxdict.plan.chips import Topology
from jaxdict.sae.config import ConfigError

# libtpu takes a machine-wide lock file unless told that several processes may load it (two plans,
# or a plan beside the test suite, would otherwise fail with "libtpu multi-process lockfile").
# Off a TPU VM libtpu also warns that it cannot find the VM's accelerator type and worker hostnames
# (only used to run on local chips, which a compile-only topology never does): name placeholders.
# setdefault: a real TPU VM's own settings win.
_LIBTPU_ENV = {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_WORKER_HOSTNAMES": "localhost", "TPU_ACCELERATOR_TYPE": "v5litepod-4"}


def _chips_per_host_bounds(topo: Topology) -> tuple[int, int, int]:
    # Cloud TPU hosts hold a 2x2 block of chips in multi-host slices (v4, v5p: 2x2x1; v5e, v6e: 2x2);
    # a slice smaller than that is one host.
    dims = list(topo.dims) + [1] * (3 - len(topo.dims))
    return (min(2, dims[0]), min(2, dims[1]), 1)


@functools.lru_cache(maxsize=16)
def _topology_devices(name: str, dims: tuple[int, ...], num_slices: int, bounds: tuple[int, int, int]) -> tuple:
    for key, value in _LIBTPU_ENV.items():
        os.environ.setdefault(key, value)
    try:
        from jax.experimental import topologies
    except ImportError as err:  # pragma: no cover - jax always ships it
        raise ConfigError(f"this jax has no jax.experimental.topologies: {err}") from err
    topology_name = f"{name}:{'x'.join(map(str, dims))}"
    try:
        # v4 chips have two TensorCores that JAX drives as one device ("megacore"), as on a v4 VM.
        chip_config = "megacore" if name == "v4" else "default"
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology_name, chip_config_name=chip_config,
                                            chips_per_host_bounds=bounds, num_slices=num_slices)
    except Exception as err:  # libtpu missing, or a topology it refuses
        text = str(err)
        low = text.lower()
        if "libtpu" in low or "not installed" in low or "not found" in low or "tpu" not in low:
            raise ConfigError(f"cannot compile for {topology_name}: {text.splitlines()[0] if text else err!r}. "
                              "The TPU compiler comes with libtpu: pip install 'jaxdict[tpu]' (jax[tpu] of the "
                              "installed jax version)") from err
        raise ConfigError(f"libtpu refuses topology {topology_name} x{num_slices} slices: {text.splitlines()[0]}") from err
    devices = sorted(desc.devices, key=lambda d: (getattr(d, "slice_index", 0), d.id))
    return tuple(devices)


def topology_devices(topo: Topology) -> list:
    """The devices of a TPU topology (slice-major order), ready for `jaxdict.train.mesh.make_mesh`."""
    if topo.chip.kind != "tpu":
        raise ConfigError(f"{topo.chip.name} is a GPU: it cannot be compiled for without one; "
                          "use the analytic estimate (`jaxdict plan --estimate`)")
    return list(_topology_devices(topo.chip.topology_name, topo.dims, topo.num_slices, _chips_per_host_bounds(topo)))


def slice_of(device) -> int:
    return int(getattr(device, "slice_index", 0) or 0)
