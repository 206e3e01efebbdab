"""`jaxdict train --config FILE[:NAME] [--set key=value ...] [--out DIR]`: train one SAE, or a sweep
axis of SAEs that share one pass over the data, resuming when DIR holds the same run."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_multihost_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("multi-host (auto-detected on Cloud TPU pods and SLURM)")
    g.add_argument("--coordinator", help="HOST:PORT of process 0's coordination service")
    g.add_argument("--num-processes", type=int, help="number of processes in the job")
    g.add_argument("--process-id", type=int, help="this process's index, 0 .. num-processes-1")
    g.add_argument("--cpu-devices", type=int,
                   help="CPU devices per process (testing multi-device code without accelerators)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE[:NAME]",
                        help="experiments/<file>.py:NAME (a CONFIGS entry, a SWEEPS variant trained as "
                             "one sweep axis, or a sweep point's name), or a JSON config (e.g. a run's config.json)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set optim.lr=3e-4 --set sae.k=32 (repeatable)")
    parser.add_argument("--out", help="run folder (default: run.out_dir of the config); for several "
                                      "configs, the parent of one folder per run.name")
    parser.add_argument("--force", action="store_true",
                        help="delete a different run found in the run folder instead of refusing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (same as --set run.progress=false)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="write a jax.profiler trace of N steps into <run folder>/profile")
    add_multihost_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Bad input (ConfigError, StoreError, the loader's ValueErrors naming bad sizes) propagates;
    jaxdict.cli turns it into one line, exit 1. Exit 1 too when a run diverged."""
    from jaxdict.train.distributed import initialize

    print(initialize(args.coordinator, args.num_processes, args.process_id, args.cpu_devices), file=sys.stderr)
    import jax

    from jaxdict.config import apply_overrides
    from jaxdict.train.config import load_run_configs
    from jaxdict.train.driver import train_group
    from jaxdict.train.epochs import warn_if_repeats

    overrides = args.overrides + (["run.progress=false"] if args.no_progress else [])
    cfgs = [apply_overrides(c, overrides) for c in load_run_configs(args.config)]
    dirs = _run_dirs(cfgs, args.out)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if jax.process_index() == 0:
        for cfg, d in zip(cfgs, dirs):
            print(f"# resolved config of {cfg.run.name} -> {d}")
            print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True), flush=True)
            warn_if_repeats(cfg, log)
    results = train_group(cfgs, dirs, force=args.force, profile_steps=args.profile, log=log)
    code = 0
    for r in results:
        if r.diverged:
            print(f"jaxdict train: {r.name}: {r.stop_reason}", file=sys.stderr)
            code = 1
        elif r.preempted:
            print(f"{r.name}: preempted at step {r.step}; rerun the same command to resume", file=sys.stderr)
        else:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in r.eval.items())
            print(f"{r.name}: finished at step {r.step}; held-out {shown}")
    return code


def _run_dirs(cfgs, out: str | None) -> list[str]:
    """One folder per config: `out` for a single run, else `out/<run.name>` (or each run.out_dir)."""
    if len(cfgs) == 1:
        return [out or cfgs[0].run.out_dir]
    parent = out or cfgs[0].run.out_dir
    return [str(Path(parent) / c.run.name) if parent else c.run.out_dir for c in cfgs]
