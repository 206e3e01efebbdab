"""`jaxdict eval RUN --out DIR`: reconstruction metrics on held-out activations and the SAE spliced
into the language model (delta_ce, ce_recovered, kl). Writes eval.json, eval.txt, density.png."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="training run folder, exported SAELens folder or Gemma Scope params.npz")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--store", default=None,
                        help="activation store of the SAE's model and hook (default: the run's own store)")
    parser.add_argument("--split", default="eval", choices=("eval", "train", "all"),
                        help="rows of the store to use: the held-out documents (default), the rest, or all")
    parser.add_argument("--eval-fraction", type=float, default=0.01,
                        help="held-out fraction of documents, as in training (default 0.01)")
    parser.add_argument("--tokens", type=int, default=200_000,
                        help="activation tokens for fvu/l0/dead/dense (default 200000; fewer if the split is smaller)")
    parser.add_argument("--text-tokens", type=int, default=2048,
                        help="text tokens run through the LM for delta_ce/kl (default 2048; 0 skips the LM)")
    parser.add_argument("--corpus", default=None,
                        help="text for the spliced evaluation instead of the store's held-out documents: "
                             "'default', a file or a folder (.txt/.jsonl/.parquet)")
    parser.add_argument("--context", type=int, default=None,
                        help="window length with BOS for --corpus text (default: the store's, else 128)")
    parser.add_argument("--model", default=None, help="language model (default: the one the SAE was trained on)")
    parser.add_argument("--batch-size", type=int, default=2, help="LM windows per forward pass (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"jaxdict eval: error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from jaxdict.evaluate import heldout, report
    from jaxdict.evaluate.metrics import ActivationMetrics
    from jaxdict.sae.io import load_sae
    from jaxdict.store import open_store

    for name in ("tokens", "text_tokens", "batch_size"):
        if getattr(args, name) < (1 if name == "batch_size" else 0):
            raise ValueError(f"--{name.replace('_', '-')} = {getattr(args, name)} must be >= "
                             f"{1 if name == 'batch_size' else 0}")
    sae = load_sae(args.run, args.step)
    store_path = args.store or sae.extra.get("store")
    if store_path is None:
        raise ValueError(f"{args.run} records no activation store; pass --store PATH")
    store = open_store(store_path)
    meta = store.metadata
    sae.check_compatible(meta.get("model"), meta.get("hook"), f"store {store_path}")
    if store.d_in != sae.d_in:
        raise ValueError(f"store {store_path} holds d_in={store.d_in} activations; the SAE takes d_in={sae.d_in}")
    ranges = heldout.split_ranges(store, args.split, args.eval_fraction, max_rows=args.tokens)
    n_rows = sum(b - a for a, b in ranges)
    if n_rows == 0:
        raise ValueError(f"store {store_path} has no rows in split {args.split!r} with eval_fraction="
                         f"{args.eval_fraction}; try --split all or a larger --eval-fraction")
    acc = ActivationMetrics(sae)
    bar = tqdm(total=n_rows, unit="tok", unit_scale=True, desc="activations", disable=args.no_progress)
    for x in heldout.iter_activation_batches(store, ranges, 4096):
        acc.update(x)
        bar.update(len(x))
    bar.close()
    result: dict = {"run": str(args.run), "step": sae.step, "model": sae.model, "hook": sae.hook,
                    "store": str(store_path), "split": args.split, "eval_fraction": args.eval_fraction}
    result.update(acc.result())

    if args.text_tokens > 0:
        import jaxdict.lm
        from jaxdict.evaluate.spliced import sae_splice_metrics

        model = args.model or sae.model or meta.get("model")
        if model is None:
            raise ValueError("neither the SAE nor the store names its model; pass --model")
        sae.check_compatible(model, None, "--model")
        lm = jaxdict.lm.load(model)
        if args.corpus is not None:
            from jaxdict.corpus import open_corpus

            context = args.context or int(meta.get("context_length", 128))
            docs = (d.text for d in open_corpus(args.corpus).documents())
            windows = heldout.windows_from_text(docs, lm.tokenizer, context, args.text_tokens)
            result["text_source"] = f"corpus {args.corpus}"
        else:
            meta_rows = heldout.read_meta_ranges(store, heldout.split_ranges(
                store, args.split, args.eval_fraction, max_rows=max(args.text_tokens * 4, args.text_tokens + 4096)))
            windows = heldout.windows_from_rows(meta_rows["token_ids"], meta_rows["doc_ids"],
                                                meta_rows["positions"], lm.tokenizer.bos_id, args.text_tokens)
            result["text_source"] = f"store {store_path} split {args.split}"
        if not windows:
            raise ValueError("no whole text windows found for the spliced evaluation; use --corpus")
        bar = tqdm(total=sum(len(w) for w in windows), unit="tok", desc="spliced LM", disable=args.no_progress)
        result.update(sae_splice_metrics(lm, sae, windows, args.batch_size, progress=bar.update))
        bar.close()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "density.npy", acc.density.astype(np.float32))
    report.density_histogram(acc.density, out / "density.png", acc.n,
                             title=f"feature density, {sae.hook or ''} ({acc.n:,} tokens)")
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    table = report.format_table(result, title=f"jaxdict eval {args.run} (step {sae.step})")
    (out / "eval.txt").write_text(table + "\n")
    print(table)
    print(f"wrote {out / 'eval.json'}, {out / 'eval.txt'}, {out / 'density.png'}")
    return 0
