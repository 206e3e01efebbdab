"""When a step does not fit: what overflowed, and a mesh or batch that fits (found by compiling).

Candidates, tried in order until one fits or `max_compiles` is spent: the same sharding mode on a
wider model axis (the features, hence the weight-sized gradients and Adam state, split over more
chips), then FSDP on each mesh (state over every chip; not for a CLT, whose features live over
`model` only), then halving the batch on the asked mesh. States that cannot fit by the closed-form
size (jaxdict.plan.train_plan.estimate_state_bytes) are skipped without compiling.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable

from jaxdict.plan.chips import GiB
from jaxdict.plan.train_plan import TrainPlan, estimate_state_bytes, plan_train
from jaxdict.train.config import RunConfig


def overflow_message(plan: TrainPlan) -> str:
    """What overflowed, in words, from the compiler's refusal or the memory analysis."""
    hbm = plan.topology.chip.hbm_bytes / GiB
    if plan.cost is None:
        m = re.search(r"HLO temporaries \(([\d.]+[KMGT]?)\)", plan.error)
        what = f"temporaries need {m.group(1)}" if m else (
            "parameters + Adam state" if "Adam state alone" in plan.error else "the program")
        return f"does not fit: {what} on each {plan.topology.chip.name} ({hbm:.2f} GiB HBM): {plan.error}"
    mem = plan.cost.memory
    parts = {**mem.parts, "temporaries": mem.temporaries}
    biggest = max(parts, key=parts.get)
    return (f"does not fit: {mem.peak / GiB:.2f} GiB per device > {hbm:.2f} GiB HBM of a {plan.topology.chip.name}; "
            f"largest: {biggest} {parts[biggest] / GiB:.2f} GiB")


def _with(cfg: RunConfig, *, data: int | None = None, model: int | None = None, shard: str | None = None,
          batch: int | None = None) -> RunConfig:
    mesh = dataclasses.replace(cfg.mesh, data=data if data is not None else cfg.mesh.data,
                               model=model or cfg.mesh.model, shard=shard or cfg.mesh.shard)
    out = dataclasses.replace(cfg, mesh=mesh)
    if batch:
        out = dataclasses.replace(out, data=dataclasses.replace(cfg.data, batch_size=batch))
    return out


def candidates(cfg: RunConfig, n_chips: int) -> list[RunConfig]:
    models = [m for m in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if m <= n_chips and n_chips % m == 0]
    n_features = cfg.clt.n_features if cfg.clt is not None else cfg.sae.n_features
    wider = [m for m in models if m > cfg.mesh.model and n_features % m == 0]
    out = [_with(cfg, data=n_chips // m, model=m) for m in wider]
    # A CLT stores its features over `model` only (RunConfig refuses fsdp for it).
    if cfg.mesh.shard != "fsdp" and cfg.clt is None:
        out += [_with(cfg, data=n_chips // m, model=m, shard="fsdp") for m in [cfg.mesh.model, *wider]
                if n_features % n_chips == 0]
    batch = cfg.data.batch_size // 2
    n_data = cfg.mesh.data or n_chips // cfg.mesh.model
    while batch >= n_data and batch % n_data == 0 and batch >= 256:
        out.append(_with(cfg, batch=batch))
        batch //= 2
    return out


def find_fit(cfg: RunConfig, plan: TrainPlan, max_compiles: int = 4,
             log: Callable[[str], None] = lambda _: None) -> TrainPlan | None:
    """The first candidate that fits by compiling, or None."""
    chip, n = plan.topology.chip, plan.topology.n_chips
    compiles = 0
    for cand in candidates(cfg, n):
        state = estimate_state_bytes(cand, n, cand.mesh.model)
        if sum(state.values()) > chip.hbm_bytes:
            continue
        if compiles >= max_compiles:
            break
        compiles += 1
        log(f"trying mesh {cand.mesh.data or n // cand.mesh.model}x{cand.mesh.model} shard={cand.mesh.shard} "
            f"batch={cand.data.batch_size}")
        tried = plan_train(cand, plan.topology, plan.sweep_size)
        if tried.fits:
            return tried
    return None
