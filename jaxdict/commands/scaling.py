"""`jaxdict scaling fit SWEEP_DIR_OR_CSV --out report/`: fit scaling laws to a finished sweep."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="scaling_command", metavar="ACTION", required=True)
    fit = sub.add_parser(
        "fit",
        help="fit L(C), F*(C), S*(C) and lr*(C) on the compute-optimal frontier; write report.md, fit.json, plots",
        description=(
            "Read a sweep's results.csv, take the compute-optimal frontier (runs that no cheaper or "
            "equally expensive run beats), fit L(C) = a·C^(−b) + c and the power laws F*(C), S*(C), "
            "D*(C) and lr*(C) (the last when lr varies) with bootstrap intervals, check extrapolation "
            "on held-out largest runs, and write report.md, fit.json and PNG/SVG plots. Diverged runs "
            "and runs with a non-finite loss stay listed in the report but out of the fit."
        ),
    )
    fit.add_argument("table", metavar="SWEEP_DIR_OR_CSV",
                     help="a sweep output folder holding results.csv, or the path of a results CSV")
    fit.add_argument("--out", required=True, help="folder for report.md, fit.json and the plots (created)")
    fit.add_argument("--metric", choices=("final_loss", "fvu"), default="final_loss",
                     help="the loss L to fit (default: final_loss)")
    fit.add_argument("--bootstrap", type=int, default=1000,
                     help="bootstrap resamples of the frontier for 95%% intervals; 0 for none (default: 1000)")
    fit.add_argument("--holdout-top", type=int, default=2,
                     help="largest-compute frontier runs held out to check the extrapolation of L(C); "
                          "0 for no check (default: 2)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default: 0)")
    fit.add_argument("--compute", choices=("auto", "flops", "features_x_tokens"), default="auto",
                     help="compute C: the flops column, n_features × tokens, or auto = flops when every "
                          "used run has it, else n_features × tokens (default: auto)")
    fit.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                     help="fit only rows whose COLUMN equals VALUE (numbers compare as numbers); "
                          "repeatable, e.g. --where arch=topk --where k=32")
    fit.add_argument("--no-plots", action="store_true", help="skip the PNG/SVG plots")


def _parse_where(items: list[str]) -> dict[str, str]:
    where = {}
    for item in items:
        column, sep, value = item.partition("=")
        if not sep or not column.strip():
            raise ValueError(f"--where {item!r} is not COLUMN=VALUE (e.g. --where arch=topk)")
        where[column.strip()] = value.strip()
    return where


def run(args: argparse.Namespace) -> int:
    """Bad input (ScalingInputError, a malformed --where) raises; jaxdict.cli: one line, exit 1."""
    from jaxdict.scaling import fit_sweep

    result = fit_sweep(
        args.table, args.out, metric=args.metric, bootstrap=args.bootstrap,
        holdout_top=args.holdout_top, seed=args.seed, compute=args.compute, where=_parse_where(args.where),
        make_plots=not args.no_plots,
    )
    law = result["fits"]["loss"]
    ci = law["ci"]["b"]
    ci_text = f" (95% CI {ci[0]:.4f} to {ci[1]:.4f})" if ci else ""
    print(f"{law['fitted']}; exponent b = {law['b']:.4f}{ci_text}; "
          f"{len(result['frontier'])} frontier runs of {result['n_included']} used")
    if result["extrapolation"]:
        for p in result["extrapolation"]["points"]:
            print(f"held out {p['name']}: predicted {p['predicted']:.5g}, measured {p['measured']:.5g} "
                  f"({100 * p['rel_error']:+.2f} %)")
    print(f"wrote {args.out}/report.md and fit.json")
    return 0
