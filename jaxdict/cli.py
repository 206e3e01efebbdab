"""The `jaxdict` console script: one sub-command per pipeline stage.

Each sub-command lives in `jaxdict/commands/<name>.py` and exposes `add_arguments(parser)` and
`run(args) -> int`. Modules are imported only when their command runs, so `jaxdict --help` does not
pay for importing JAX.

Exit codes are decided here, the same for every command: 0 done; 1 bad input (one line
`jaxdict CMD: error: ...` on stderr; a command signals it by raising ValueError, FileNotFoundError,
a store error or a quickstart error) or a result the command reports as failed (a diverged run,
a corrupt store, unfinished sweep points); 2 a command line argparse cannot parse; 130 Ctrl-C.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> one-line help. Order is the order of the data flow (DESIGN.md §2).
COMMANDS: dict[str, str] = {
    "harvest": "run the language model over a corpus and write activations into a store",
    "store": "inspect, verify or import an activation store",
    "train": "train one SAE (or a sweep axis of SAEs) from a config",
    "sweep": "run every point of a sweep file, skipping finished and resuming interrupted ones",
    "scaling": "fit scaling laws to a finished sweep and plot them",
    "eval": "evaluate an SAE: fvu, l0, dead/dense fractions, and delta_ce / kl spliced into the LM",
    "features": "explore features: top contexts, logit effects, neighbours, HTML dashboard, search",
    "absorption": "feature absorption by SAEBench's first-letter metric (Chanin et al. 2024)",
    "find": "concept search: rank features by how well they separate positive from negative examples",
    "steer": "clamp features while the LM generates and measure the effect (BOS left alone)",
    "steer-eval": "batch steering evaluation of a suite against DiffMean, random and prompting baselines",
    "export": "export an SAE to the SAELens layout or import SAELens / Gemma Scope weights",
    "bench": "measure train-step, loader and harvester throughput",
    "plan": "compile for a TPU slice on this machine: per-device memory, FLOPs, collectives, roofline",
    "quickstart": "the whole pipeline end to end on the embedded default (Gemma 3 270M)",
}


def _module(command: str) -> str:
    """Module of a sub-command: `steer-eval` lives in jaxdict/commands/steer_eval.py."""
    return command.replace("-", "_")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxdict",
        description="Sparse autoencoders on language-model activations, sharded in JAX.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            module = importlib.import_module(f"jaxdict.commands.{_module(name)}")
            module.add_arguments(p)
    return parser


def _is_bad_input(err: Exception) -> bool:
    """ValueError covers ConfigError, SweepError, CorpusError and ScalingInputError."""
    if isinstance(err, (ValueError, FileNotFoundError)):
        return True
    # A store or quickstart error can only come from a command that imported its module: look it
    # up there rather than import tensorstore (or the whole pipeline) into every command.
    for module, name in (("jaxdict.store.errors", "StoreError"), ("jaxdict.quickstart", "QuickstartError")):
        found = sys.modules.get(module)
        if found is not None and isinstance(err, getattr(found, name)):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(only=command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(f"jaxdict.commands.{_module(args.command)}")
    try:
        return int(module.run(args) or 0)
    except Exception as err:
        if not _is_bad_input(err):
            raise
        # Bad input found by a command (a wrong path, a value out of range, a missing or corrupt
        # store): one clear line, exit 1.
        print(f"jaxdict {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
