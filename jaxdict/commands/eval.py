"""`jaxdict eval RUN --out DIR`: reconstruction metrics on held-out activations and the SAE spliced
into the language model (delta_ce, ce_recovered, kl). Writes eval.json, eval.txt, density.png."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="training run folder, exported SAELens folder or Gemma Scope params.npz")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--store", default=None,
                        help="activation store of the SAE's model and hook (default: the run's own store)")
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
    import numpy as np

    from jaxdict.evaluate import report
    from jaxdict.sae.io import load_sae

    for name in ("tokens", "text_tokens", "batch_size"):
        low = 1 if name in ("batch_size", "tokens") else 0
        if getattr(args, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} = {getattr(args, name)} must be >= {low}")
    sae = load_sae(args.run, args.step)
    if args.eval_fraction is None:  # the split the run held out while training
        args.eval_fraction = float(sae.extra.get("eval_fraction") or 0.01)
    result: dict = {"run": str(args.run), "step": sae.step, "model": sae.model, "hook": sae.hook}
    lm = None
    if args.corpus is None:
        acc, windows_fn, store_meta = _from_store(args, sae, result)
    else:
        lm = _load_lm(args, sae, {})
        acc, windows_fn, store_meta = _from_corpus(args, sae, result, lm)
    result.update(acc.result())

    if args.text_tokens > 0:
        from tqdm import tqdm

        from jaxdict.evaluate.spliced import sae_splice_metrics

        lm = lm or _load_lm(args, sae, store_meta)
        windows = windows_fn(lm)
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


def _load_lm(args, sae, store_meta: dict):
    import jaxdict.lm

    model = args.model or sae.model or store_meta.get("model")
    if model is None:
        raise ValueError("neither the SAE nor the store names its model; pass --model")
    sae.check_compatible(model, None, "--model")
    return jaxdict.lm.load(model)


def _from_store(args, sae, result: dict):
    """Metrics over the store's split; text windows rebuilt from the same split's token ids."""
    from tqdm import tqdm

    from jaxdict.evaluate import heldout
    from jaxdict.evaluate.metrics import ActivationMetrics

    store = heldout.open_sae_store(sae, args.store, args.run, "pass --store PATH (or --corpus TEXT)")
    store_path, meta = store.path, store.metadata
    ranges = heldout.split_ranges(store, args.split, args.eval_fraction, max_rows=args.tokens)
    n_rows = sum(b - a for a, b in ranges)
    if n_rows == 0:
        raise ValueError(f"store {store_path} has no rows in split {args.split!r} with eval_fraction="
                         f"{args.eval_fraction}; try --split all, a larger --eval-fraction, or --corpus")
    acc = ActivationMetrics(sae)
    bar = tqdm(total=n_rows, unit="tok", unit_scale=True, desc="activations", disable=args.no_progress)
    for x in heldout.iter_activation_batches(store, ranges, 4096):
        acc.update(x)
        bar.update(len(x))
    bar.close()
    result.update({"activations_source": f"store {store_path} split {args.split}", "store": str(store_path),
                   "split": args.split, "eval_fraction": args.eval_fraction})

    def windows_fn(lm):
        rows = heldout.split_ranges(store, args.split, args.eval_fraction,
                                    max_rows=max(args.text_tokens * 4, args.text_tokens + 4096))
        m = heldout.read_meta_ranges(store, rows)
        result["text_source"] = f"store {store_path} split {args.split}"
        return heldout.windows_from_rows(m["token_ids"], m["doc_ids"], m["positions"], lm.tokenizer.bos_id,
                                         args.text_tokens)

    return acc, windows_fn, meta


def _from_corpus(args, sae, result: dict, lm):
    """Metrics over LM activations of corpus text (no store needed), and the same text spliced."""
    import jax.numpy as jnp
    import numpy as np
    from tqdm import tqdm

    from jaxdict.corpus import open_corpus
    from jaxdict.evaluate import heldout
    from jaxdict.evaluate.metrics import ActivationMetrics
    from jaxdict.evaluate.spliced import pad_windows

    if sae.hook is None:
        raise ValueError("the SAE records no hook; give an SAE that does (export --hook) to use --corpus")
    context = args.context or 128
    docs = (d.text for d in open_corpus(args.corpus).documents())
    windows = heldout.windows_from_text(docs, lm.tokenizer, context, max(args.tokens, args.text_tokens))
    acc = ActivationMetrics(sae)
    bar = tqdm(total=sum(len(w) - 1 for w in windows), unit="tok", desc="activations", disable=args.no_progress)
    n = 0
    for b in range(0, len(windows), 8):
        if n >= args.tokens:
            break
        ids, mask = pad_windows(windows[b:b + 8], lm.tokenizer.pad_id)
        acts = np.asarray(lm.activations(jnp.asarray(ids), sae.hook, jnp.asarray(mask)))
        keep = mask.copy()
        keep[:, 0] = False  # BOS is not an activation the SAE was trained on
        x = acts[keep][: args.tokens - n]
        acc.update(x)
        n += len(x)
        bar.update(len(x))
    bar.close()
    result.update({"activations_source": f"LM activations of corpus {args.corpus}", "context": context})

    def windows_fn(_lm):
        result["text_source"] = f"corpus {args.corpus}"
        out, total = [], 0
        for w in windows:
            if total >= args.text_tokens:
                break
            w = w[: 1 + args.text_tokens - total]
            out.append(w)
            total += len(w) - 1
        return out

    return acc, windows_fn, {"model": sae.model}
