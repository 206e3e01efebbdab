"""Plan a training run for a TPU slice before renting it: compile the exact step `jaxdict train`
runs for the slice's devices, then read memory, FLOPs, collectives and a roofline from it.
"""
from __future__ import annotations

import dataclasses

from jaxdict.plan.analysis import ProgramCost, analyse, shard_bytes
from jaxdict.plan.chips import Topology
from jaxdict.plan.devices import topology_devices
from jaxdict.plan.roofline import Roofline, roofline
from jaxdict.sae.config import ConfigError
from jaxdict.train.config import RunConfig
from jaxdict.train.mesh import make_mesh


@dataclasses.dataclass(frozen=True)
class TrainPlan:
    cfg: RunConfig
    topology: Topology
    mesh_shape: tuple[int, int]  # (data, model)
    sweep_size: int | None
    cost: ProgramCost | None  # None when the compiler refused (out of memory)
    roofline: Roofline | None
    error: str = ""  # the compiler's refusal, when it refused

    @property
    def fits(self) -> bool:
        return self.cost is not None and self.cost.memory.fits


def lower_train_step(cfg: RunConfig, devices: list, sweep_size: int | None = None):
    """Lower the train step of `cfg` for `devices` exactly as the driver builds it (same function,
    state and batch shardings, donation, sweep axis, dtype). Returns (lowered, argument parts):
    the parts are per-device bytes of params, optimiser state, the rest of the state and the batch."""
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.model, devices=devices)
    if cfg.clt is not None:  # the CLT step the driver builds (jaxdict/clt/train_setup.py)
        from jaxdict.clt.train_step import build_clt_step

        built = build_clt_step(cfg.clt, cfg.optim, mesh, cfg.data.batch_size, sweep_size=sweep_size)
    else:
        from jaxdict.train.step_builder import build_train_step

        built = build_train_step(cfg, mesh, sweep_size=sweep_size)
    step, state, batch = built.step, built.abstract_state, built.abstract_batch
    parts = {"params": shard_bytes(state.params), "optimiser state": shard_bytes(state.opt_state),
             "other state": shard_bytes(state) - shard_bytes(state.params) - shard_bytes(state.opt_state),
             "batch": shard_bytes(batch)}
    return step.lower(state, batch), parts


def is_out_of_memory(err: Exception) -> bool:
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text or "exceeds available" in text


def plan_train(cfg: RunConfig, topology: Topology, sweep_size: int | None = None) -> TrainPlan:
    """Compile `cfg`'s step for `topology` (mesh from cfg.mesh; data=None takes every chip)."""
    devices = topology_devices(topology)
    n_model = cfg.mesh.model
    if len(devices) % n_model:
        raise ConfigError(f"mesh.model = {n_model} does not divide the {len(devices)} chips of {topology.name}")
    n_data = cfg.mesh.data or len(devices) // n_model
    state = estimate_state_bytes(cfg, n_data * n_model, n_model)
    need = sum(state.values()) * (sweep_size or 1)
    if need > topology.chip.hbm_bytes:
        # Refused before compiling (a compile of a program this large takes minutes on a CPU).
        return TrainPlan(cfg, topology, (n_data, n_model), sweep_size, None, None,
                         error=f"parameters + Adam state alone need {need / 2**30:.2f} GiB per device "
                               f"(closed form, jaxdict.plan.train_plan.estimate_state_bytes)")
    lowered, parts = lower_train_step(cfg, devices, sweep_size)
    try:
        compiled = lowered.compile()
    except Exception as err:  # the TPU compiler refuses a program that does not fit its HBM
        if not is_out_of_memory(err):
            raise
        return TrainPlan(cfg, topology, (n_data, n_model), sweep_size, None, None, error=_first_line(err))
    cost = analyse(compiled, parts, topology.chip.hbm_bytes, devices[: n_data * n_model])
    tokens = cfg.data.batch_size * (sweep_size or 1)
    return TrainPlan(cfg, topology, (n_data, n_model), sweep_size, cost,
                     roofline(cost, topology.chip, compute_dtype(cfg), cfg.data.batch_size))


def _first_line(err: Exception) -> str:
    for line in str(err).splitlines():
        if "memory" in line.lower() or "RESOURCE_EXHAUSTED" in line:
            return line.strip()
    return str(err).splitlines()[0] if str(err) else repr(err)


def compute_dtype(cfg: RunConfig) -> str:
    """The step's matmul dtype: a CLT computes in float32 (jaxdict/clt/forward.py)."""
    return "float32" if cfg.clt is not None else cfg.sae.compute_dtype


def model_flops(cfg: RunConfig) -> float:
    """The step's FLOPs by the kernel model of DESIGN.md §7 (whole batch, all devices); a CLT's
    by jaxdict.clt.bench.step_flops."""
    from jaxdict.bench.step import kernel_step_flops

    if cfg.clt is not None:
        from jaxdict.plan.clt_plan import clt_step_flops

        return clt_step_flops(cfg)
    return kernel_step_flops(cfg.sae, cfg.data.batch_size)


def estimate_state_bytes(cfg: RunConfig, n_devices: int, n_model: int) -> dict[str, float]:
    """Per-device bytes of params and Adam state without compiling: W_enc, W_dec (d·F each), b_enc,
    threshold (F), b_dec (d), float32, two Adam moments each; "model" splits F over the model axis,
    "fsdp" over every device. A CLT: jaxdict.plan.clt_plan.clt_state_bytes."""
    if cfg.clt is not None:
        from jaxdict.plan.clt_plan import clt_state_bytes

        return clt_state_bytes(cfg.clt, n_model)
    s = cfg.sae
    per_param = 4.0 * (2 * s.d_in * s.n_features + s.n_features * (2 if s.has_threshold else 1) + s.d_in)
    split = n_devices if cfg.mesh.shard == "fsdp" else n_model
    return {"params": per_param / split, "optimiser state": 2 * per_param / split}

