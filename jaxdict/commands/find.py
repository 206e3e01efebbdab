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


def _read_examples(path: str | None) -> list[str]:
    if path is None:
        return []
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not a JSON string ({err.msg}); write one JSON string per line") from None
        if not isinstance(text, str):
            raise ValueError(f"{path}:{n}: expected a JSON string, got {type(text).__name__}")
        out.append(text)
    return out


def _suite_examples(name: str, tokenizer, max_context: int) -> tuple[list[str], list[str]]:
    from jaxdict.evaluate.steer_suite import load_suite

    dev = load_suite(name, tokenizer, max_context).split("dev")
    return ([p.prompt + "[[" + p.target + "]]" for p in dev], [p.prompt + "[[" + p.alternative + "]]" for p in dev])


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
    from jaxdict.commands import features as features_cmd
    from jaxdict.evaluate.concept_search import example_scores, make_example, rank_features
    from jaxdict.evaluate.dashboard import page_name
    from jaxdict.sae.io import load_sae

    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    sae = load_sae(args.run, args.step)
    model = args.model or sae.model
    if model is None:
        raise ValueError("the SAE does not name its model; pass --model")
    sae.check_compatible(model, None, "--model")
    lm = jaxdict.lm.load(model)
    pos = args.positive + _read_examples(args.positive_file)
    neg = args.negative + _read_examples(args.negative_file)
    if args.suite:
        sp, sn = _suite_examples(args.suite, lm.tokenizer, lm.config.max_context)
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
        p = argparse.ArgumentParser()
        features_cmd.add_arguments(p)
        argv = [args.run, "--out", str(out / "dashboard"), "--tokens", str(args.tokens), "--no-progress",
                "--features", *[str(h["feature"]) for h in hits]]
        argv += ["--store", args.store] if args.store else []
        argv += ["--step", str(args.step)] if args.step is not None else []
        argv += ["--model", args.model] if args.model else []
        features_cmd.run(p.parse_args(argv))
    (out / "find.json").write_text(json.dumps({"positives": pos, "negatives": neg, "features": hits}, indent=1))
    (out / "find.md").write_text(markdown(hits, len(pos), len(neg), not args.no_dashboard), encoding="utf-8")
    for r, h in enumerate(hits[:10], start=1):
        print(f"{r:>3}. #{h['feature']:<6} AUROC {h['auroc']:.3f}  mean diff {h['mean_diff']:+.3f}  "
              f"precision top {h['precision_top']:.2f}")
    print(f"wrote {out / 'find.md'}" + ("" if args.no_dashboard else f", {out / 'dashboard' / 'index.html'}"))
    return 0
