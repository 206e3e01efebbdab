"""`jaxdict quickstart`: harvest → train → eval → features → steer on Gemma 3 270M, end to end."""
from __future__ import annotations

import argparse

from jaxdict.quickstart import QuickstartConfig, run_quickstart

_DEFAULT = QuickstartConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=_DEFAULT.out, help=f"output folder (default {_DEFAULT.out}); "
                        "re-running with the same folder reuses finished stages")
    parser.add_argument("--layer", type=int, default=_DEFAULT.layer,
                        help=f"block whose residual stream is harvested (default {_DEFAULT.layer}, the middle of 18)")
    parser.add_argument("--tokens", type=int, default=_DEFAULT.tokens,
                        help=f"activation rows to harvest (default {_DEFAULT.tokens})")
    parser.add_argument("--corpus", default=_DEFAULT.corpus,
                        help="'default' (the Python standard library's source, always installed) or a text file, "
                             "folder, .jsonl or .parquet")
    parser.add_argument("--eval-fraction", type=float, default=_DEFAULT.eval_fraction,
                        help="fraction of documents held out for evaluation (default %(default)s)")
    parser.add_argument("--features", type=int, default=_DEFAULT.features,
                        help=f"dictionary size F (default {_DEFAULT.features})")
    parser.add_argument("--k", type=int, default=_DEFAULT.k, help=f"TopK k (default {_DEFAULT.k})")
    parser.add_argument("--steps", type=int, default=_DEFAULT.steps, help=f"training steps (default {_DEFAULT.steps})")
    parser.add_argument("--batch-size", type=int, default=_DEFAULT.batch_size,
                        help=f"tokens per step (default {_DEFAULT.batch_size})")
    parser.add_argument("--lr", type=float, default=_DEFAULT.lr, help=f"Adam learning rate (default {_DEFAULT.lr})")
    parser.add_argument("--eval-tokens", type=int, default=_DEFAULT.eval_tokens,
                        help="held-out activation rows for fvu/l0 (default %(default)s)")
    parser.add_argument("--text-tokens", type=int, default=_DEFAULT.text_tokens,
                        help="held-out text tokens run through the LM with the SAE spliced in (default %(default)s)")
    parser.add_argument("--feature-tokens", type=int, default=_DEFAULT.feature_tokens,
                        help="rows scanned for the feature dashboard (default %(default)s)")
    parser.add_argument("--pages", type=int, default=_DEFAULT.pages, help="feature pages (default %(default)s)")
    parser.add_argument("--prompt", default=_DEFAULT.prompt, help="steering prompt")
    parser.add_argument("--max-new-tokens", type=int, default=_DEFAULT.max_new_tokens,
                        help="tokens generated per steering strength (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    cfg = QuickstartConfig(
        out=args.out, layer=args.layer, tokens=args.tokens, corpus=args.corpus, eval_fraction=args.eval_fraction, features=args.features, k=args.k, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, eval_tokens=args.eval_tokens, text_tokens=args.text_tokens,
        feature_tokens=args.feature_tokens, pages=args.pages, prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
    )
    run_quickstart(cfg, progress=not args.no_progress)  # QuickstartError: jaxdict.cli, exit 1
    return 0
