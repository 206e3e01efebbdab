"""`jaxdict features RUN --out DIR`: explore features over a corpus sample of the SAE's store.

Writes max_activations.npy (for `jaxdict steer`), feature_stats.npz, features.json, a static HTML
dashboard (index.html + features/*.html) and, with --search, search.json.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="training run folder, exported SAELens folder or Gemma Scope params.npz")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--store", default=None, help="activation store (default: the run's own store)")
    parser.add_argument("--split", default="all", choices=("eval", "train", "all"),
                        help="store rows to sample (default all: max activations as seen in training data)")
    parser.add_argument("--eval-fraction", type=float, default=None,
                        help="held-out fraction of documents (default: the run's data.eval_fraction, else 0.01)")
    parser.add_argument("--tokens", type=int, default=100_000, help="corpus sample size in tokens (default 100000)")
    parser.add_argument("--features", type=int, nargs="+", default=None,
                        help="feature indices to give pages (default: the first --pages features that fire)")
    parser.add_argument("--pages", type=int, default=100, help="pages to write when --features is not given")
    parser.add_argument("--n-top", type=int, default=12, help="top activating contexts per feature (default 12)")
    parser.add_argument("--search", action="append", default=[],
                        help="a text: list the features most active on it (repeatable)")
    parser.add_argument("--model", default=None, help="language model (default: the SAE's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random quantile samples")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Bad input raises ValueError / FileNotFoundError; jaxdict.cli turns it into one line, exit 1."""
    from jaxdict.evaluate.feature_dashboard import build_feature_dashboard

    result = build_feature_dashboard(
        args.run, args.out, step=args.step, store=args.store, split=args.split, eval_fraction=args.eval_fraction,
        tokens=args.tokens, features=args.features, pages=args.pages, n_top=args.n_top, search=args.search,
        model=args.model, seed=args.seed, progress=not args.no_progress)
    print_summary(result)
    return 0


def print_summary(result) -> None:
    """The scan's dead count, the first pages and the search hits, as `jaxdict features` prints them."""
    import numpy as np

    scan, pages = result.scan, result.pages
    print(f"scanned {scan.n_tokens:,} tokens: {int(np.sum(scan.fire_count == 0))} of {result.sae.n_features} "
          f"features never fired; dashboard {result.index} ({len(pages)} feature pages)")
    for p in pages[:10]:
        promoted = " ".join(repr(t) for t, _ in p["promoted"][:6])
        print(f"  #{p['feature']:<6} max {p['max_act']:<8.3g} density {p['density']:<9.3g} promotes {promoted}")
    for r in result.search:
        print(f"features most active on {r['text']!r}:")
        for f in r["features"][:10]:
            frac = f"{f['frac_of_max']:.2f} of max" if f["frac_of_max"] is not None else ""
            print(f"  #{f['feature']:<6} {f['max']:.3f} {frac}")
