"""`jaxdict features RUN --out DIR`: explore features over a corpus sample of the SAE's store.

Writes max_activations.npy (for `jaxdict steer`), feature_stats.npz, features.json, a static HTML
dashboard (index.html + features/*.html) and, with --search, search.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


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
    import numpy as np
    from tqdm import tqdm

    import jaxdict.lm
    from jaxdict.evaluate import heldout
    from jaxdict.evaluate.dashboard import write_dashboard
    from jaxdict.evaluate.explorer import scan_features, search_text
    from jaxdict.evaluate.feature_pages import feature_pages, index_rows
    from jaxdict.sae.io import load_sae

    if args.tokens < 1 or args.pages < 0 or args.n_top < 1:
        raise ValueError(f"--tokens ({args.tokens}) and --n-top ({args.n_top}) must be >= 1, "
                         f"--pages ({args.pages}) >= 0")
    sae = load_sae(args.run, args.step)
    eval_fraction = heldout.resolve_eval_fraction(sae, args.eval_fraction)
    chosen = [sae.check_feature(i) for i in args.features] if args.features else None
    store = heldout.open_sae_store(sae, args.store, args.run)
    store_path, meta_info = store.path, store.metadata
    model = heldout.resolve_model(sae, args.model, meta_info)

    ranges = heldout.split_ranges(store, args.split, eval_fraction, max_rows=args.tokens)
    n = sum(b - a for a, b in ranges)
    if n == 0:
        raise ValueError(f"store {store_path} has no rows in split {args.split!r}")
    bar = tqdm(total=n, unit="tok", unit_scale=True, desc="features", disable=args.no_progress)
    parts = []
    for x in heldout.iter_activation_batches(store, ranges, 4096):
        parts.append(np.asarray(x, np.float32))
        bar.update(len(x))
    bar.close()
    x_all = np.concatenate(parts)
    meta = heldout.read_meta_ranges(store, ranges)
    scan = scan_features(sae, (x_all[i:i + 4096] for i in range(0, n, 4096)), n_top=args.n_top, seed=args.seed)
    sae = sae.with_max_activations(scan.max_act)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "max_activations.npy", scan.max_act.astype(np.float32))
    np.savez(out / "feature_stats.npz", max_act=scan.max_act, density=scan.density,
             mean_active=scan.mean_active, fire_count=scan.fire_count, n_tokens=scan.n_tokens)
    if chosen is None:
        chosen = [int(i) for i in np.flatnonzero(scan.fire_count > 0)[: args.pages]]
    lm = jaxdict.lm.load(model)
    pages = feature_pages(sae, lm, scan, x_all, meta, chosen)
    title = f"{Path(args.run).name} · {sae.hook} · {sae.cfg.arch} F={sae.n_features}"
    info = {"model": model, "hook": sae.hook, "step": sae.step, "tokens": scan.n_tokens,
            "dead": int(np.sum(scan.fire_count == 0)), "store": store_path}
    index = write_dashboard(out, index_rows(scan, pages), pages, title, info)
    (out / "features.json").write_text(json.dumps({"info": info, "features": pages}))
    print(f"scanned {scan.n_tokens:,} tokens: {int(np.sum(scan.fire_count == 0))} of {sae.n_features} "
          f"features never fired; dashboard {index} ({len(pages)} feature pages)")
    for p in pages[:10]:
        promoted = " ".join(repr(t) for t, _ in p["promoted"][:6])
        print(f"  #{p['feature']:<6} max {p['max_act']:<8.3g} density {p['density']:<9.3g} promotes {promoted}")
    if args.search:
        results = [search_text(lm, sae, text) for text in args.search]
        (out / "search.json").write_text(json.dumps(results, indent=1))
        for r in results:
            print(f"features most active on {r['text']!r}:")
            for f in r["features"][:10]:
                frac = f"{f['frac_of_max']:.2f} of max" if f["frac_of_max"] is not None else ""
                print(f"  #{f['feature']:<6} {f['max']:.3f} {frac}")
    return 0
