"""`jaxdict steer RUN --feature I --strength 0 5 10 -5 --prompt "..." --out DIR`: clamp features
while the LM generates, keep the SAE error term, and measure the effect. Writes steer.json,
steer.txt and steer.html. Position 0 (BOS) is never clamped unless --include-bos."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="training run folder, exported SAELens folder or Gemma Scope params.npz")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--feature", type=int, action="append", required=True,
                        help="feature index to clamp (repeat for several)")
    parser.add_argument("--strength", type=float, nargs="+", default=[0.0, 5.0, 10.0, -5.0],
                        help="clamp to c × max activation for each c (default: 0 5 10 -5; 0 ablates)")
    parser.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="tokens to generate (default 40)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed when temperature > 0")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--max-activations", default=None,
                        help="max_activations.npy or the output folder of `jaxdict features` "
                             "(default: the one stored with the SAE, if any)")
    parser.add_argument("--model", default=None, help="language model (default: the SAE's)")
    parser.add_argument("--include-bos", action="store_true",
                        help="also clamp position 0 (BOS). Off by default: BOS is an attention sink the "
                             "SAE never saw (never harvested); editing it moves every later token for "
                             "reasons unrelated to the feature")


def run(args: argparse.Namespace) -> int:
    """Bad input raises ValueError / FileNotFoundError; jaxdict.cli turns it into one line, exit 1."""
    from jaxdict.evaluate.steering import check_prompt, load_for_steering, steer_prompt
    from jaxdict.evaluate.steering_report import steering_html, steering_table

    sae, lm = load_for_steering(args.run, args.step, args.max_activations, args.model, args.feature)
    for p in args.prompt:  # refuse bad prompts before any generation
        check_prompt(lm, lm.tokenizer.encode(p), args.max_new_tokens)
    results = [steer_prompt(lm, sae, p, args.feature, args.strength, args.max_new_tokens,
                            args.temperature, args.seed, include_bos=args.include_bos) for p in args.prompt]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "steer.json").write_text(json.dumps(results, indent=1))
    table = steering_table(results)
    (out / "steer.txt").write_text(table + "\n")
    title = f"steering {Path(args.run).name}: features {args.feature} at {sae.hook}"
    (out / "steer.html").write_text(steering_html(results, title), encoding="utf-8")
    print(table)
    print(f"wrote {out / 'steer.json'}, {out / 'steer.txt'}, {out / 'steer.html'}")
    return 0
