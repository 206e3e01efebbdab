"""`jaxdict sweep experiments/<file>.py[:variant] --out runs/<name>`: train every point of a sweep."""
from __future__ import annotations

import argparse


def _worker(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    if not sep or not i.isdigit() or not n.isdigit() or not 0 <= int(i) < int(n):
        raise argparse.ArgumentTypeError(f"--worker {text!r}: expected I/N with 0 <= I < N")
    return int(i), int(n)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", metavar="FILE.py[:VARIANT]",
                        help="a sweep file exposing SWEEPS {variant: [RunConfig]} (e.g. experiments/topk_grid.py:tiny)")
    parser.add_argument("--out", required=True, help="sweep folder: one run folder per point, results.csv")
    parser.add_argument("--processes", type=int, default=1,
                        help="run the groups in N local processes (default 1: sequentially here)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these points")
    parser.add_argument("--no-group", action="store_true",
                        help="train every point on its own pass, even when shapes agree")
    parser.add_argument("--table-only", action="store_true",
                        help="train nothing: write results.csv from the finished points (e.g. after "
                             "launching points separately with `jaxdict train --config FILE.py:POINT --out OUT/POINT`)")
    parser.add_argument("--worker", type=_worker, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """A bad sweep file or folder raises (jaxdict.cli: one line, exit 1); exit 1 too when points
    are left unfinished."""
    from jaxdict.sweep import run_sweep

    unfinished = run_sweep(args.sweep, args.out, processes=args.processes, only=args.only,
                           group=not args.no_group, worker=args.worker, table_only=args.table_only,
                           log=lambda m: print(m, flush=True))
    return 1 if unfinished else 0
