"""`jaxdict absorption RUN --out DIR`: feature absorption by SAEBench's first-letter metric
(Chanin et al. 2024). Writes absorption.json and absorption.md; `--cache` keeps the LM activations
and the first-letter probe, shared by every SAE of the same model and hook."""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="training run folder, exported SAELens folder or Gemma Scope params.npz")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--hook", default=None, help="hook the SAE reads, e.g. resid_post.9 (default: the SAE's own)")
    parser.add_argument("--model", default=None, help="language model (default: the one the SAE was trained on)")
    parser.add_argument("--words", type=int, default=None,
                        help="random subset of the alphabetic single-token words (default: all of them, "
                             "as SAEBench; ~140,000 for Gemma 3, i.e. slow on a CPU)")
    parser.add_argument("--seed", type=int, default=42, help="word sample, split and prompts (SAEBench's 42)")
    parser.add_argument("--latents", type=int, default=None,
                        help="score only latents 0..N-1 (a Matryoshka prefix); default all")
    parser.add_argument("--cache", default=None,
                        help=".npz of the LM activations and probe: read if it exists, else written")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per LM forward pass (default 16)")
    parser.add_argument("--data-epochs", action="store_true",
                        help="a probe epoch is one pass over the sampled words (default: as many steps as "
                             "SAEBench's pass over the whole vocabulary)")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    """Bad input raises ValueError / FileNotFoundError; jaxdict.cli turns it into one line, exit 1."""
    import time

    import jaxdict.lm
    from jaxdict.evaluate.absorption import evaluate_absorption, markdown_summary, write_absorption
    from jaxdict.evaluate.absorption_data import AbsorptionSettings, probe_data_for
    from jaxdict.sae.io import load_sae

    sae = load_sae(args.run, args.step)
    if args.latents is not None and not 1 <= args.latents <= sae.n_features:
        raise ValueError(f"--latents {args.latents} out of range; valid: 1..{sae.n_features}")
    hook = args.hook or sae.hook
    if hook is None:
        raise ValueError(f"{args.run} records no hook; give --hook, e.g. resid_post.9")
    sae.check_compatible(None, hook, "--hook")
    model = args.model or sae.model or "gemma3-270m"
    settings = AbsorptionSettings(hook=hook, n_words=args.words, seed=args.seed, lm_batch_size=args.batch_size,
                                  vocabulary_steps=not args.data_epochs)
    lm = jaxdict.lm.load(model)
    sae.check_compatible(lm.name, None, "language model")
    started = time.time()
    last = [0.0]

    def progress(name: str, done: int, total: int) -> None:
        if not args.no_progress and (time.time() - last[0] > 30 or done == total):
            last[0] = time.time()
            print(f"  {name} prompts {done}/{total} ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)

    data = probe_data_for(lm, settings, args.cache, progress)
    result = evaluate_absorption(sae, data, settings, args.latents)
    result["seconds"] = round(time.time() - started, 1)
    out = write_absorption(result, args.out)
    print(markdown_summary(result))
    print(f"wrote {out / 'absorption.json'}, {out / 'absorption.md'}")
    return 0 if result["mean_absorption_fraction_score"] is not None else 1
