"""`jaxdict steer-eval SUITE --sae RUN_OR_EXPORT --out DIR`: a batch steering evaluation.

Chooses a feature, its strength and a DiffMean vector on the suite's dev kinds only, sweeps
steering strengths for the feature and the baselines (DiffMean, a random feature, a random direction
of equal norm, prompting), and reports behaviour shift, wrong-way prompts, pattern matches,
perplexity and KL on a neutral text, with a matched-KL comparison. Writes steer_eval.json,
steer_eval.md and steer_eval.png. Steering never edits position 0 (BOS).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", help="a built-in suite (unsafe-code, deprecation) or a JSONL suite file")
    parser.add_argument("--sae", required=True,
                        help="training run folder (Orbax checkpoint), exported SAELens folder or Gemma Scope params.npz")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--max-activations", default=None,
                        help="max_activations.npy or a `jaxdict features` output folder (default: the SAE's own)")
    parser.add_argument("--strength", type=float, nargs="+", default=[-4.0, -2.0, 1.0, 2.0, 4.0, 8.0, 16.0],
                        help="strengths s: clamps to s × max activation, vectors of s × the feature's max "
                             "contribution norm (default: -4 -2 1 2 4 8 16; negative = suppression)")
    parser.add_argument("--feature", type=int, default=None, help="evaluate this feature (skip the dev search)")
    parser.add_argument("--candidates", type=int, default=6, help="top dev-AUROC features swept on dev (default 6)")
    parser.add_argument("--select-kl", type=float, default=0.5,
                        help="strengths are chosen on dev among those with KL <= this (default 0.5 nat)")
    parser.add_argument("--kl-budget", type=float, nargs="+", default=[0.1, 0.3, 1.0],
                        help="KL budgets of the matched-KL comparison (default 0.1 0.3 1)")
    parser.add_argument("--max-new-tokens", type=int, default=6, help="greedy tokens generated per prompt (default 6)")
    parser.add_argument("--generate-all", action="store_true",
                        help="greedy generations at every sweep point (default: at each method's dev-chosen "
                             "strength and the clamp's strongest only)")
    parser.add_argument("--boundary", choices=("follow", "refuse"), default="follow",
                        help="a prompt whose last token merges with its completion: 'follow' scores the "
                             "completion's own tokens after the prompt's own tokens; 'refuse' rejects it")
    parser.add_argument("--dashboard", default=None,
                        help="a `jaxdict features` output folder (relative to --out) to link feature pages")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random baselines")
    parser.add_argument("--model", default=None, help="language model (default: the SAE's)")


def run(args: argparse.Namespace) -> int:
    """Bad input raises ValueError / FileNotFoundError; jaxdict.cli turns it into one line, exit 1."""
    from jaxdict.evaluate.steer_eval import Settings, run_steer_eval
    from jaxdict.evaluate.steer_eval_report import write_outputs
    from jaxdict.evaluate.steer_suite import load_suite
    from jaxdict.evaluate.steering import load_for_steering

    settings = Settings(strengths=tuple(args.strength), kl_budgets=tuple(args.kl_budget), select_kl=args.select_kl,
                        n_candidates=args.candidates, max_new_tokens=args.max_new_tokens, seed=args.seed,
                        feature=args.feature, generate_all=args.generate_all)
    sae, lm = load_for_steering(args.sae, args.step, args.max_activations, args.model,
                                [args.feature] if args.feature is not None else [])
    suite = load_suite(args.suite, lm.tokenizer, lm.config.max_context, args.boundary, args.max_new_tokens)
    result = run_steer_eval(lm, sae, suite, settings)
    result["sae"]["source"] = str(args.sae)
    paths = write_outputs(result, Path(args.out), args.dashboard)
    v = result["verdict"]
    print(f"feature {result['selection']['feature']}: {v['kinds_moved']}/{len(result['suite']['test_kinds'])} test "
          f"kinds moved -> {'concept feature' if v['concept_feature'] else 'word-level'}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
