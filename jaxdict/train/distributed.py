"""Multi-host start-up: `jax.distributed.initialize`, explicit or auto-detected.

Auto-detection covers the environments JAX itself knows (Cloud TPU pods, SLURM with several
tasks); elsewhere the coordinator address, process count and id are given explicitly. On CPU the
cross-process collectives use gloo (DESIGN.md §5 point 10).
"""
from __future__ import annotations

import os

import jax

from jaxdict.sae.config import ConfigError


def _auto_detectable() -> str | None:
    """Which cluster environment JAX can initialise from, or None for a single process."""
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in os.environ:
        return "SLURM"
    # Multi-host Cloud TPU VMs list every worker here (one entry per host).
    workers = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if len([w for w in workers.split(",") if w.strip()]) > 1:
        return "TPU pod"
    if "MEGASCALE_COORDINATOR_ADDRESS" in os.environ:
        return "TPU multislice"
    return None


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    cpu_devices: int | None = None,
) -> str:
    """Start jax.distributed when asked (all three flags) or when the environment is a known
    cluster; returns a line describing what happened. Call before any other JAX work."""
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ConfigError(
            f"multi-host needs --coordinator, --num-processes and --process-id together "
            f"(got coordinator={coordinator!r}, num_processes={num_processes!r}, process_id={process_id!r})"
        )
    if cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", int(cpu_devices))
    if all(given):
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ConfigError(f"--process-id {process_id} must lie in [0, --num-processes={num_processes})")
        if num_processes > 1:
            # gloo: the CPU backend's cross-process collectives (harmless for accelerators).
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
        return f"jax.distributed: process {process_id} of {num_processes} via {coordinator}"
    env = _auto_detectable()
    if env is not None:
        jax.distributed.initialize()
        return f"jax.distributed: auto-detected {env}, process {jax.process_index()} of {jax.process_count()}"
    return "single process"
