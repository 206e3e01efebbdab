"""The field's headline SAEs, planned for TPU slices with `jaxdict plan` (compiled on a CPU machine).

    jaxdict plan --topology v5e:2x4 --config experiments/scale.py:gemma_scope_1m
    python experiments/scale.py --out experiments/results/scale_plans.md     # every plan + tables

- gemma_scope_1m: Gemma Scope 2's 1M-wide residual SAE on Gemma 3 270M (JumpReLU; d_model 640;
  Gemma Scope trained with batch 4096, Lieberum et al. 2024, App. B).
- topk_16m: a 16M-latent TopK SAE (Gao et al. 2024, k = 32 as in their 16M GPT-4 run).
- relu_l1_34m: a 34M-feature ReLU-L1 SAE (Templeton et al. 2024; λ = 5, F = 2^25 ≈ 33.6M).
d_in = 4096 for the last two is OUR ASSUMPTION: neither GPT-4's nor Claude 3 Sonnet's width is
public. Batch 8192 tokens for them is ours too. Compute in bf16, parameters and Adam in fp32.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import sys
from pathlib import Path

from base import derive

from jaxdict.sae.config import SAEConfig
from jaxdict.train.config import DataConfig, MeshConfig, RunConfig, RunSettings
from jaxdict.train.optim import OptimConfig

_DATA = DataConfig(source="store", store="gs://your-bucket/activations", batch_size=8192)
_BASE = RunConfig(optim=OptimConfig(lr=2e-4, total_steps=100_000), data=_DATA, run=RunSettings(name="scale"))


def _sae(name: str, sae: SAEConfig, **changes) -> RunConfig:
    return derive(dataclasses.replace(_BASE, sae=sae), name, **changes)


GEMMA_SCOPE_1M = _sae("gemma_scope_1m", SAEConfig(arch="jumprelu", d_in=640, n_features=1 << 20,
                                                  compute_dtype="bfloat16"),
                      data__batch_size=4096, data__model="gemma3-270m", data__hook="resid_post.9")
TOPK_16M = _sae("topk_16m", SAEConfig(arch="topk", d_in=4096, n_features=1 << 24, k=32, compute_dtype="bfloat16"))
RELU_L1_34M = _sae("relu_l1_34m", SAEConfig(arch="relu_l1", d_in=4096, n_features=1 << 25, l1_coeff=5.0,
                                            compute_dtype="bfloat16"))

CONFIGS = {c.run.name: c for c in (GEMMA_SCOPE_1M, TOPK_16M, RELU_L1_34M)}

# Slices tried in order for each, smallest first (Cloud TPU slice shapes); the mesh puts every chip
# on the model axis (data = 1): a batch of B×F pre-activations then splits over all chips, as do
# the parameters and Adam state.
SLICES = {
    "gemma_scope_1m": ["v5e:2x2", "v5e:2x4", "v5e:4x4"],
    "topk_16m": ["v5p:4x4x4", "v5p:4x4x8", "v5p:4x8x8"],
    "relu_l1_34m": ["v5p:4x4x8", "v5p:4x8x8", "v5p:8x8x8"],
}
# One that does not fit, and its message: the 34M SAE on a v5e pod's quarter.
REFUSED = ("relu_l1_34m", "v5e:8x8")


def _plan_text(cfg: RunConfig, topology: str, search: int = 0) -> tuple[int, str]:
    from jaxdict.plan.chips import parse_topology
    from jaxdict.plan.cli_output import print_train_plan

    topo = parse_topology(topology)
    cfg = dataclasses.replace(cfg, mesh=MeshConfig(data=1, model=topo.n_chips))
    args = argparse.Namespace(search=search, store_dtype="bfloat16", loader_gbps=None)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code, _ = print_train_plan(cfg, topo, None, args)
    return code, buf.getvalue()


def memory_table(cfg: RunConfig, counts=(1, 2, 4, 8, 16)) -> list[str]:
    """Per-device params + Adam state of the exact step's inputs on n v5e chips: the model axis
    (1×n), and data × model (n/2 × 2) stored as before (over `model` only) and with FSDP."""
    from jaxdict.plan.chips import GiB, parse_topology
    from jaxdict.plan.devices import topology_devices
    from jaxdict.plan.analysis import shard_bytes
    from jaxdict.train.mesh import make_mesh
    from jaxdict.train.step_builder import build_train_step

    devices = topology_devices(parse_topology("v5e:4x4"))
    rows = ["| devices | model axis 1×n (shard=model) | data×model, shard=model (before FSDP) | data×model, shard=fsdp |",
            "|---|---|---|---|"]
    for n in counts:
        cells = []
        dm = (max(n // 2, 1), min(n, 2))
        for shard, (data, model) in (("model", (1, n)), ("model", dm), ("fsdp", dm)):
            c = dataclasses.replace(cfg, mesh=MeshConfig(data=data, model=model, shard=shard))
            built = build_train_step(c, make_mesh(data, model, devices=devices[:n]))
            s = built.abstract_state
            cells.append(f"{(shard_bytes(s.params) + shard_bytes(s.opt_state)) / GiB:,.2f} GiB ({data}×{model})")
        rows.append(f"| {n} | {' | '.join(cells)} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="experiments/results/scale_plans.md")
    p.add_argument("--only", choices=list(CONFIGS), action="append")
    a = p.parse_args(argv)
    lines = ["# Headline SAEs planned for TPU slices", "", "Made by `python experiments/scale.py`; "
             "d_in 4096 for the 16M and 34M SAEs is our assumption.", ""]
    for name in a.only or CONFIGS:
        for topology in SLICES[name]:
            code, text = _plan_text(CONFIGS[name], topology)
            lines += [f"## {name} on {topology}: {'fits' if code == 0 else 'does not fit'}", "", "```", text.rstrip(),
                      "```", ""]
            print(text, flush=True)
            if code == 0:
                break
    name, topology = REFUSED
    code, text = _plan_text(CONFIGS[name], topology, search=0)
    lines += [f"## Refused: {name} on {topology} (exit {code})", "", "```", text.rstrip(), "```", ""]
    for name in ("gemma_scope_1m", "relu_l1_34m"):
        lines += [f"## Per-device state of {name}", ""] + memory_table(CONFIGS[name]) + [""]
    Path(a.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    raise SystemExit(main())
