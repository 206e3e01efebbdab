"""Unsteered preference of every prompt of a steering suite: log P(target) − log P(alternative)
under the language model alone (the baseline that steer-eval measures shifts from).

    python experiments/suite_preferences.py unsafe-code [--model gemma3-270m] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite")
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import jaxdict.lm
    from jaxdict.evaluate.steer_metrics import behaviour
    from jaxdict.evaluate.steer_suite import load_suite

    lm = jaxdict.lm.load(args.model)
    suite = load_suite(args.suite, lm.tokenizer, lm.config.max_context)
    prefs = behaviour(lm, suite.prompts)
    rows = [{"line": p.line, "split": p.split, "kind": p.kind, "prompt": p.prompt, "target": p.target,
             "alternative": p.alternative, "preference": float(v)} for p, v in zip(suite.prompts, prefs)]
    kinds = sorted({r["kind"] for r in rows})
    print(f"{'kind':<20} {'split':<5} {'mean':>7} {'min':>7} {'max':>7}  prefers target")
    for k in kinds:
        v = [r["preference"] for r in rows if r["kind"] == k]
        split = next(r["split"] for r in rows if r["kind"] == k)
        print(f"{k:<20} {split:<5} {sum(v) / len(v):>+7.2f} {min(v):>+7.2f} {max(v):>+7.2f}  {sum(x > 0 for x in v)}/{len(v)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"suite": suite.name, "model": args.model, "prompts": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
