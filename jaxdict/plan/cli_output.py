"""What `jaxdict plan` prints and returns (exit code, JSON record)."""
from __future__ import annotations

from typing import Any

from jaxdict.plan import report
from jaxdict.plan.chips import GiB, Topology
from jaxdict.train.config import RunConfig


def _record(plan: Any) -> dict:
    out: dict[str, Any] = {"topology": plan.topology.name, "mesh": "x".join(map(str, plan.mesh_shape)),
                           "fits": plan.fits, "error": plan.error}
    if plan.cost is not None:
        m = plan.cost.memory
        out["memory_gib"] = {**{k: v / GiB for k, v in m.parts.items()}, "temporaries": m.temporaries / GiB,
                             "peak": m.peak / GiB, "hbm": m.hbm / GiB}
        out["flops_per_device"] = plan.cost.flops
        out["hbm_bytes_per_device"] = plan.cost.bytes_accessed
        out["sort_bytes_per_device"] = plan.cost.sort_bytes
        out["collective_wire_bytes"] = sum(u.collective.wire_bytes for u in plan.cost.collectives)
    if plan.roofline is not None:
        out["roofline"] = plan.roofline.as_dict()
    return out


def _row_width(cfg: RunConfig) -> int:
    """Values per token the hosts read: a CLT's row is resid_mid.l and mlp_out.l of every layer."""
    return 2 * cfg.clt.n_layers * cfg.clt.d_model if cfg.clt is not None else cfg.sae.d_in


def _sae_line(cfg: RunConfig, sweep: int | None) -> str:
    s = cfg.sae
    k = f" k={s.k}" if s.arch in ("topk", "batchtopk") else ""
    sw = f", sweep axis of {sweep}" if sweep else ""
    return (f"SAE {s.arch}{k}: d_in {s.d_in}, F {s.n_features:,}, batch {cfg.data.batch_size}, compute "
            f"{s.compute_dtype}, shard={cfg.mesh.shard}{sw}")


def topk_option_lines(plan: Any) -> list[str]:
    """For the TopK family on TPU: what `lax.approx_max_k` would save, and its recall (emulated)."""
    import numpy as np

    from jaxdict.plan.approx_topk import recall

    cfg, cost = plan.cfg, plan.cost
    if cfg.clt is not None:  # a CLT's top-k runs per layer on [B, F] rows; its traffic is in the roofline
        return []
    if cfg.sae.arch not in ("topk", "batchtopk") or not cost.sorts or plan.topology.chip.kind != "tpu":
        return []
    exact = [s for s in cost.sorts if s.op in ("topk", "sort")]
    big = max(exact, key=lambda s: s.operand_bytes) if exact else None
    if big is None:
        return []
    row, k = big.row_length, big.k or cfg.sae.k
    x = np.random.default_rng(0).standard_normal((64, row)).astype(np.float32)
    rec = recall(x, min(k, row - 1), 0.95)
    saved = sum(s.hbm_bytes for s in exact) - sum(s.operand_bytes for s in exact)
    return [f"option: lax.approx_max_k(recall_target=0.95) for the top-k reads each operand once: "
            f"saves ~{1e3 * saved / plan.topology.chip.hbm_bw:.3f} ms per step; recall {rec:.3f} against exact "
            f"top-{k} of {row} Gaussian values (TPU binning emulated, jaxdict/plan/approx_topk.py)"]


def print_train_plan(cfg: RunConfig, topo: Topology, sweep: int | None, args: Any, out=print) -> tuple[int, dict]:
    from jaxdict.plan.advice import find_fit, overflow_message
    from jaxdict.plan.clt_plan import clt_line
    from jaxdict.plan.train_plan import compute_dtype, model_flops, plan_train

    if topo.chip.kind == "gpu":
        from jaxdict.plan.gpu import plan_on_local_compiler

        plan = plan_on_local_compiler(cfg, topo)
    else:
        plan = plan_train(cfg, topo, sweep)
    out(f"plan {cfg.run.name!r} on {report.topology_line(topo)}; mesh {plan.mesh_shape[0]}x{plan.mesh_shape[1]} data×model")
    out(_sae_line(cfg, sweep) if cfg.clt is None else clt_line(cfg, sweep))
    out(report.chip_line(topo.chip, compute_dtype(cfg)))
    record = {"config": cfg.run.name, **_record(plan)}
    if plan.cost is not None:
        for line in report.memory_lines(plan.cost.memory):
            out(line)
    if plan.fits:
        n = plan.mesh_shape[0] * plan.mesh_shape[1]
        out(f"FLOPs per device per step: compiled {plan.cost.flops:.3e}; HBM bytes (cost analysis) "
            f"{plan.cost.bytes_accessed / 1e9:.3f} GB")
        for lines in (report.collective_lines(plan.cost), report.sort_lines(plan.cost, topo.chip),
                      report.roofline_lines(plan.roofline, model_flops(cfg), n, "DESIGN.md §7" if cfg.clt is None
                                            else "jaxdict.clt.bench.step_flops"),
                      report.input_lines(plan.roofline, topo, _row_width(cfg), args.store_dtype,
                                         args.loader_gbps * 1e9 if args.loader_gbps else None),
                      topk_option_lines(plan)):
            for line in lines:
                out(line)
        return 0, record
    out(f"{cfg.run.name}: {overflow_message(plan)}")
    fit = find_fit(cfg, plan, args.search, log=lambda m: out(f"  {m}")) if args.search and topo.chip.kind == "tpu" else None
    if fit is None:
        out("no mesh or batch tried fits; use a larger slice (more chips), mesh.shard=fsdp, or a smaller batch")
    else:
        m = fit.cost.memory
        out(f"fits instead: --mesh {fit.mesh_shape[0]}x{fit.mesh_shape[1]} --shard {fit.cfg.mesh.shard} "
            f"--set data.batch_size={fit.cfg.data.batch_size}: {m.peak / GiB:.2f} GiB of {m.hbm / GiB:.2f} GiB, "
            f"≈ {fit.roofline.hours_per_billion_tokens:.3f} h per 1B tokens")
        record["suggestion"] = {"mesh": f"{fit.mesh_shape[0]}x{fit.mesh_shape[1]}", "shard": fit.cfg.mesh.shard,
                                "batch_size": fit.cfg.data.batch_size, **_record(fit)}
    return 1, record


def print_harvest_plan(args: Any, topo: Topology, out=print) -> int:
    from jaxdict.plan.harvest_plan import plan_harvest

    plan = plan_harvest(args.harvest, topo, batch=args.batch or 64, context=args.context, layer=args.layer,
                        layout=args.layout, n_model=_model_axis(args), dtype="bfloat16")
    out(f"harvest {plan.model} through block {plan.layer} on {report.topology_line(topo)}; layout {plan.layout}, "
        f"mesh {plan.mesh_shape[0]}x{plan.mesh_shape[1]}, {plan.batch} windows × {plan.context} tokens, bf16 weights")
    out(report.chip_line(topo.chip, "bfloat16"))
    if plan.cost is not None:
        for line in report.memory_lines(plan.cost.memory):
            out(line)
    if not plan.fits:
        hint = ("split the weights: --layout model --mesh 1xM" if plan.layout == "replicated"
                else "a larger model axis, more chips, or fewer windows per step (--batch)")
        out(f"does not fit: {plan.error or 'peak above HBM'}; try {hint}")
        return 1
    out(f"FLOPs per device per step: compiled {plan.cost.flops:.3e}")
    for line in report.collective_lines(plan.cost) + report.roofline_lines(plan.roofline):
        out(line)
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"model": plan.model, **_record(plan)}, f, indent=2, default=str)
    return 0


def _model_axis(args: Any) -> int:
    if not args.mesh:
        return 1
    from jaxdict.commands.plan import _parse_mesh

    return _parse_mesh(args.mesh)[1]

