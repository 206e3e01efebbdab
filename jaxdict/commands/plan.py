"""`jaxdict plan --topology v5e:2x2 --config FILE[:NAME] [--set ...] [--mesh DxM] [--shard fsdp]`:
compile the exact train step for a TPU slice on this (CPU) machine and print its per-device memory
against HBM, FLOPs, collectives and a roofline; exit 1, with a mesh or batch that fits, when it does
not fit. `--harvest gemma3-27b --batch 64 --context 1024` plans the harvest forward pass instead;
`--clt gemma3-270m --clt-features 262k --batch 4096` a cross-layer transcoder over every layer.
Compiling for TPU needs libtpu: pip install 'jaxdict[tpu]'."""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topology", required=True, metavar="CHIP:AxB[xC][*SLICES]",
                        help="TPU slice(s): v4:2x2x2, v5e:4x4, v5p:2x2x4, v6e:8x8, v5e:16x16*2 (2 slices); "
                             "h100:N / h200:N (GPUs) take the estimate path")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", metavar="FILE[:NAME]", help="a training config, as for `jaxdict train`")
    what.add_argument("--harvest", metavar="MODEL", help="plan the harvest forward pass of a Gemma 3 model: "
                                                           "gemma3-270m, gemma3-1b, gemma3-4b, gemma3-12b, gemma3-27b")
    what.add_argument("--clt", metavar="MODEL", help="plan a cross-layer transcoder over every layer of a Gemma 3 "
                                                       "model (gemma3-270m, gemma3-1b, ...): the step `jaxdict train` "
                                                       "runs for a config with a clt section")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (repeatable), e.g. --set data.batch_size=8192")
    parser.add_argument("--mesh", metavar="DxM", help="data x model mesh, e.g. 2x8 (default: the config's mesh)")
    parser.add_argument("--shard", choices=("model", "fsdp"), help="how params and optimiser state are stored")
    parser.add_argument("--search", type=int, default=4, metavar="N",
                        help="compiles spent looking for a mesh or batch that fits when the plan does not (0: none)")
    parser.add_argument("--store-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="dtype of the activation store the hosts read (input bandwidth)")
    parser.add_argument("--loader-gbps", type=float, help="measured `jaxdict bench loader` rate per host, GB/s "
                                                          "(default: BENCHMARKS.md's CPU measurement)")
    c = parser.add_argument_group("clt")
    c.add_argument("--clt-features", default="262k", metavar="N|WIDTH",
                   help="features per layer, or a Gemma Scope 2 CLT width name (262k; 524k for gemma3-1b) "
                        "— jaxdict/plan/clt_plan.py says which per-layer counts are sourced and which assumed")
    c.add_argument("--clt-arch", choices=("jumprelu", "topk", "batchtopk"), default="jumprelu",
                   help="activation (Gemma Scope 2's CLTs are JumpReLU); topk uses the sparse decode")
    c.add_argument("--k", type=int, help="active features per token per layer (topk, batchtopk)")
    g = parser.add_argument_group("harvest")
    g.add_argument("--batch", type=int, help="windows per step (harvest; default 64) or tokens per step "
                                             "(--clt; default 4096)")
    g.add_argument("--context", type=int, default=1024, help="tokens per window (harvest)")
    g.add_argument("--layer", type=int, help="hooked block (harvest; default: the middle one)")
    g.add_argument("--layout", choices=("replicated", "model"), default="replicated",
                   help="harvest weights replicated (what `jaxdict harvest` does) or split over a model axis")
    parser.add_argument("--json", metavar="PATH", help="also write the plan as JSON")


def _parse_mesh(text: str) -> tuple[int, int]:
    from jaxdict.sae.config import ConfigError

    try:
        data, model = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--mesh {text!r}: expected DATAxMODEL, e.g. 2x8") from None
    if data < 1 or model < 1:
        raise ConfigError(f"--mesh {text!r}: both sizes must be >= 1")
    return data, model


def _load_config(args):
    import dataclasses

    from jaxdict.config import apply_overrides
    from jaxdict.train.config import load_run_configs

    cfgs = [apply_overrides(c, args.overrides) for c in load_run_configs(args.config)]
    cfg = cfgs[0]
    mesh = cfg.mesh
    if args.mesh:
        data, model = _parse_mesh(args.mesh)
        mesh = dataclasses.replace(mesh, data=data, model=model)
    if args.shard:
        mesh = dataclasses.replace(mesh, shard=args.shard)
    return dataclasses.replace(cfg, mesh=mesh), (len(cfgs) if len(cfgs) > 1 else None)


def _clt_config(args):
    from jaxdict.plan.clt_plan import clt_run_config, parse_width

    data, model = _parse_mesh(args.mesh) if args.mesh else (None, 1)
    if args.shard == "fsdp":
        from jaxdict.sae.config import ConfigError

        raise ConfigError("--shard fsdp: a CLT stores its features over `model` only; use --mesh DxM")
    cfg = clt_run_config(args.clt, parse_width(args.clt, args.clt_features), arch=args.clt_arch, k=args.k,
                         batch_size=args.batch or 4096, data=data, model_axis=model)
    if args.overrides:
        from jaxdict.config import apply_overrides

        cfg = apply_overrides(cfg, args.overrides)
    return cfg


def run(args: argparse.Namespace) -> int:
    from jaxdict.plan.chips import parse_topology

    topo = parse_topology(args.topology)
    if args.harvest:
        from jaxdict.plan.cli_output import print_harvest_plan

        return print_harvest_plan(args, topo)
    if args.clt:
        cfg, sweep = _clt_config(args), None
    else:
        cfg, sweep = _load_config(args)
    from jaxdict.plan.cli_output import print_train_plan

    code, record = print_train_plan(cfg, topo, sweep, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2, default=str)
    return code
