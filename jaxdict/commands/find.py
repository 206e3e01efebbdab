"""`jaxdict find RUN --positive TEXT... --negative TEXT... --out DIR`: concept search.

Ranks the SAE's features by how well they separate positive from negative examples (AUROC, mean
activation difference, precision among the top activations; jaxdict/evaluate/concept_search.py).
Mark the relevant part of a text as [[...]] to score only its tokens. `--suite NAME` takes the
suite's dev prompts, target completions as positives and alternatives as negatives. Writes
find.json and find.md, and (unless --no-dashboard) dashboard pages for the hits, built from the
SAE's store as `jaxdict features` builds them, linked from find.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="training run folder, exported SAELens folder or Gemma Scope params.npz")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--positive", action="append", default=[], help="a positive example text (repeatable)")
    parser.add_argument("--negative", action="append", default=[], help="a negative example text (repeatable)")
    parser.add_argument("--positive-file", default=None, help="positive examples, one JSON string per line")
    parser.add_argument("--negative-file", default=None, help="negative examples, one JSON string per line")
    parser.add_argument("--suite", default=None,
                        help="use a steering suite's dev prompts: prompt+[[target]] positive, prompt+[[alternative]] negative")
    parser.add_argument("--top", type=int, default=20, help="features to list (default 20)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--store", default=None, help="activation store for the dashboard (default: the run's own)")
    parser.add_argument("--tokens", type=int, default=100_000, help="store tokens scanned for the dashboard pages")
    parser.add_argument("--no-dashboard", action="store_true", help="rank only; write no feature pages")
    parser.add_argument("--model", default=None, help="language model (default: the SAE's)")


def markdown(hits: list[dict], n_pos: int, n_neg: int, pages: bool) -> str:
    lines = [f"# Concept search: {n_pos} positive, {n_neg} negative examples", "",
             "| rank | feature | AUROC | mean diff | precision top | mean pos | mean neg |", "|---|---|---|---|---|---|---|"]
    for r, h in enumerate(hits, start=1):
        f = f"[#{h['feature']}]({h['page']})" if pages else f"#{h['feature']}"
        lines.append(f"| {r} | {f} | {h['auroc']:.3f} | {h['mean_diff']:+.3f} | {h['precision_top']:.2f} | "
                     f"{h['mean_pos']:.3f} | {h['mean_neg']:.3f} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """Bad input raises ValueError / FileNotFoundError; jaxdict.cli turns it into one line, exit 1."""
    import jaxdict.lm
    from jaxdict.commands.features import print_summary
    from jaxdict.evaluate.concept_search import (
        example_scores,
        make_example,
        rank_features,
        read_examples,
        suite_examples,
    )
    from jaxdict.evaluate.dashboard import page_name
    from jaxdict.evaluate.feature_dashboard import build_feature_dashboard
    from jaxdict.evaluate.heldout import resolve_model
    from jaxdict.sae.io import load_sae

    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    sae = load_sae(args.run, args.step)
    lm = jaxdict.lm.load(resolve_model(sae, args.model))
    pos = args.positive + read_examples(args.positive_file)
    neg = args.negative + read_examples(args.negative_file)
    if args.suite:
        sp, sn = suite_examples(args.suite, lm.tokenizer, lm.config.max_context)
        pos, neg = pos + sp, neg + sn
    if not pos or not neg:
        raise ValueError(f"need positive and negative examples (got {len(pos)} and {len(neg)}); pass --positive/"
                         "--negative, --positive-file/--negative-file or --suite")
    tok = lm.tokenizer
    scores_pos = example_scores(lm, sae, [make_example(tok, t) for t in pos])
    scores_neg = example_scores(lm, sae, [make_example(tok, t) for t in neg])
    hits = rank_features(scores_pos, scores_neg, top=args.top)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for h in hits:
        h["page"] = f"dashboard/features/{page_name(h['feature'])}"
    if not args.no_dashboard:
        print_summary(build_feature_dashboard(args.run, out / "dashboard", step=args.step, store=args.store,
                                              tokens=args.tokens, features=[h["feature"] for h in hits],
                                              model=args.model, progress=False))
    (out / "find.json").write_text(json.dumps({"positives": pos, "negatives": neg, "features": hits}, indent=1))
    (out / "find.md").write_text(markdown(hits, len(pos), len(neg), not args.no_dashboard), encoding="utf-8")
    for r, h in enumerate(hits[:10], start=1):
        print(f"{r:>3}. #{h['feature']:<6} AUROC {h['auroc']:.3f}  mean diff {h['mean_diff']:+.3f}  "
              f"precision top {h['precision_top']:.2f}")
    print(f"wrote {out / 'find.md'}" + ("" if args.no_dashboard else f", {out / 'dashboard' / 'index.html'}"))
    return 0
