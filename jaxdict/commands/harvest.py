"""`jaxdict harvest`: run the LM over a corpus and write activations into one store per hook."""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gemma3-270m",
                   help="'gemma3-270m' (embedded default), a .gguf file or a HF Gemma 3 folder")
    p.add_argument("--hook", action="append", required=True, metavar="HOOK",
                   help="hook point KIND.L, KIND one of resid_pre, attn_out, resid_mid, mlp_in, mlp_out, "
                        "resid_post (jaxdict.lm.hooks); repeat for several: one forward pass, one "
                        "row-aligned store each")
    p.add_argument("--corpus", default="default",
                   help="'default' (the Python standard library's .py source), a text file or "
                        "folder, a .jsonl or a .parquet file")
    p.add_argument("--format", choices=["text", "jsonl", "parquet"], default=None,
                   help="corpus format (default: from the file suffix)")
    p.add_argument("--field", default="text", help="JSONL field / Parquet column holding the text")
    p.add_argument("--context", type=int, default=128,
                   help="tokens per window including BOS; documents are cut into windows")
    p.add_argument("--tokens", type=int, default=None,
                   help="stop once at least this many tokens are stored (default: whole corpus)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="windows per forward pass (rounded up to a multiple of the device count)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="activation dtype in the store")
    p.add_argument("--on-bad-utf8", choices=["skip", "fail"], default="skip",
                   help="documents that are not valid UTF-8: skip and count them, or fail")
    p.add_argument("--shard-rows", type=int, default=None,
                   help="rows per store shard (default: the store's choice, ~shards of a few MB)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output folder; stores go to OUT/<hook>/")


def run(args: argparse.Namespace) -> int:
    import jaxdict.lm
    from jaxdict.corpus import open_corpus
    from jaxdict.harvest import HarvestConfig, harvest

    config = HarvestConfig(hooks=tuple(args.hook), context=args.context, batch_size=args.batch_size,
                           max_tokens=args.tokens, dtype=args.dtype, shard_rows=args.shard_rows)
    corpus = open_corpus(args.corpus, args.format, args.field, args.on_bad_utf8)
    lm = jaxdict.lm.load(args.model)
    summary = harvest(lm, corpus, args.out, config, progress=not args.no_progress)
    print(json.dumps(summary, indent=1))
    return 0
