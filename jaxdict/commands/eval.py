"""`jaxdict eval RUN --out DIR`: reconstruction metrics on held-out activations and the SAE spliced
into the language model (delta_ce, ce_recovered, kl). Writes eval.json, eval.txt, density.png.
A CLT run folder (config.json with a `clt` section) gets jaxdict.clt.eval_run instead: per-layer
fvu and L0, decoder mass beyond l' = l, and the replacement model; eval.json and eval.txt."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="training run folder, exported SAELens folder or Gemma Scope params.npz")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--store", default=None,
                        help="activation store of the SAE's model and hook (default: the run's own store); for a CLT "
                             "run, the folder of its resid_mid.L / mlp_out.L stores")
    parser.add_argument("--target-store", default=None,
                        help="a transcoder's target store, row-aligned with --store (default: the run's own)")
    parser.add_argument("--split", default="eval", choices=("eval", "train", "all"),
                        help="rows of the store to use: the held-out documents (default), the rest, or all")
    parser.add_argument("--eval-fraction", type=float, default=None,
                        help="held-out fraction of documents (default: the run's data.eval_fraction, else 0.01)")
    parser.add_argument("--tokens", type=int, default=200_000,
                        help="activation tokens for fvu/l0/dead/dense (default 200000; fewer if the split is smaller)")
    parser.add_argument("--text-tokens", type=int, default=2048,
                        help="text tokens run through the LM for delta_ce/kl (default 2048; 0 skips the LM)")
    parser.add_argument("--corpus", default=None,
                        help="evaluate on this text instead of the store (activations computed by the LM): "
                             "'default', a file or a folder (.txt/.jsonl/.parquet)")
    parser.add_argument("--context", type=int, default=None,
                        help="window length with BOS for --corpus text (default 128)")
    parser.add_argument("--model", default=None, help="language model (default: the one the SAE was trained on)")
    parser.add_argument("--batch-size", type=int, default=2, help="LM windows per forward pass (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Bad input raises ValueError / FileNotFoundError; jaxdict.cli turns it into one line, exit 1."""
    from jaxdict.evaluate.evaluation import EvalRequest, evaluate_sae, write_eval

    if _is_clt_run(args.run):
        return _eval_clt(args)
    request = EvalRequest(
        run=args.run, step=args.step, store=args.store, target_store=args.target_store, split=args.split, eval_fraction=args.eval_fraction,
        tokens=args.tokens, text_tokens=args.text_tokens, corpus=args.corpus, context=args.context,
        model=args.model, batch_size=args.batch_size, progress=not args.no_progress)
    outcome = evaluate_sae(request)
    out, table = write_eval(outcome, args.out, title=f"jaxdict eval {args.run} (step {outcome.result['step']})")
    print(table)
    print(f"wrote {out / 'eval.json'}, {out / 'eval.txt'}, {out / 'density.png'}")
    return 0


def _is_clt_run(path: str) -> bool:
    import json
    from pathlib import Path

    config = Path(path) / "config.json"
    return config.is_file() and isinstance(json.loads(config.read_text()).get("clt"), dict)


def _eval_clt(args: argparse.Namespace) -> int:
    from jaxdict.clt.eval_run import evaluate_clt, write_clt_eval

    for flag, value in (("--target-store", args.target_store), ("--corpus", args.corpus),
                        ("--context", args.context)):
        if value is not None:
            raise ValueError(f"{flag} is for SAEs and transcoders; a CLT run reads its 2L stores under --store ROOT")
    for name, low in (("tokens", 1), ("text_tokens", 0), ("batch_size", 1)):
        if getattr(args, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} = {getattr(args, name)} must be >= {low}")
    result = evaluate_clt(args.run, step=args.step, store=args.store, split=args.split,
                          eval_fraction=args.eval_fraction, tokens=args.tokens, text_tokens=args.text_tokens,
                          model=args.model, batch_size=args.batch_size, progress=not args.no_progress)
    out, table = write_clt_eval(result, args.out, title=f"jaxdict eval {args.run} (CLT, step {result['step']})")
    print(table)
    print(f"wrote {out / 'eval.json'}, {out / 'eval.txt'}")
    return 0
