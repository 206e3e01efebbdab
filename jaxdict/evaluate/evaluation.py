"""One SAE evaluated end to end: reconstruction metrics on held-out activations (from its store or
from LM activations of a corpus) and the SAE spliced into the language model (delta_ce,
ce_recovered, kl). `jaxdict eval` is a thin command over `evaluate_sae` and `write_eval`."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxdict.evaluate import heldout
from jaxdict.evaluate.metrics import ActivationMetrics

# Rows per batch read from the store for the activation metrics.
STORE_BATCH_ROWS = 4096
# LM windows per forward pass when activations come from corpus text.
CORPUS_WINDOWS_PER_PASS = 8


@dataclasses.dataclass(frozen=True)
class EvalRequest:
    """What to evaluate. `eval_fraction` None: the run's own data.eval_fraction (else 0.01).
    `corpus` None: activations from `store` (default the SAE's own), else from the LM over that text."""

    run: str
    step: int | None = None
    store: str | None = None
    target_store: str | None = None  # a transcoder's target store (default: the run's own)
    split: str = "eval"
    eval_fraction: float | None = None
    tokens: int = 200_000
    text_tokens: int = 2048
    corpus: str | None = None
    context: int | None = None
    model: str | None = None
    batch_size: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        for name, low in (("tokens", 1), ("text_tokens", 0), ("batch_size", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"--{name.replace('_', '-')} = {getattr(self, name)} must be >= {low}")


@dataclasses.dataclass(frozen=True)
class EvalOutcome:
    result: dict[str, Any]  # everything eval.json holds
    density: np.ndarray  # float64 [F]: fraction of evaluated tokens each latent fired on
    n_tokens: int


def evaluate_sae(req: EvalRequest) -> EvalOutcome:
    from jaxdict.sae.io import load_sae

    sae = load_sae(req.run, req.step)
    eval_fraction = heldout.resolve_eval_fraction(sae, req.eval_fraction)
    result: dict = {"run": str(req.run), "step": sae.step, "model": sae.model, "hook": sae.hook}
    lm = None
    if req.corpus is None:
        acc, windows_fn, store_meta = _from_store(req, sae, eval_fraction, result)
    else:
        lm = _load_lm(req.model, sae, {})
        acc, windows_fn, store_meta = _from_corpus(req, sae, result, lm)
    result.update(acc.result())
    if req.text_tokens > 0:
        lm = lm or _load_lm(req.model, sae, store_meta)
        result.update(_spliced(req, sae, lm, windows_fn(lm)))
    return EvalOutcome(result=result, density=acc.density, n_tokens=acc.n)


def write_eval(outcome: EvalOutcome, out: str | Path, title: str) -> tuple[Path, str]:
    """eval.json, eval.txt, density.npy and density.png in `out`; returns (out, the table)."""
    from jaxdict.atomic import write_json_atomic
    from jaxdict.evaluate import report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "density.npy", outcome.density.astype(np.float32))
    hook = outcome.result.get("hook") or ""
    report.density_histogram(outcome.density, out / "density.png", outcome.n_tokens,
                             title=f"feature density, {hook} ({outcome.n_tokens:,} tokens)")
    write_json_atomic(out / "eval.json", outcome.result, indent=1)
    table = report.format_table(outcome.result, title=title)
    (out / "eval.txt").write_text(table + "\n")
    return out, table


def _bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="tok", unit_scale=True, desc=desc, disable=not progress)


def _load_lm(model: str | None, sae, store_meta: dict):
    import jaxdict.lm

    return jaxdict.lm.load(heldout.resolve_model(sae, model, store_meta))


def _spliced(req: EvalRequest, sae, lm, windows: list[list[int]]) -> dict[str, float]:
    from jaxdict.evaluate.spliced import sae_splice_metrics

    if not windows:
        raise ValueError("no whole text windows found for the spliced evaluation; use --corpus")
    bar = _bar(sum(len(w) for w in windows), "spliced LM", req.progress)
    metrics = sae_splice_metrics(lm, sae, windows, req.batch_size, progress=bar.update)
    bar.close()
    return metrics


def _from_store(req: EvalRequest, sae, eval_fraction: float, result: dict):
    """Metrics over the store's split; text windows rebuilt from the same split's token ids."""
    store = heldout.open_sae_store(sae, req.store, req.run, "pass --store PATH (or --corpus TEXT)")
    ranges = heldout.split_ranges(store, req.split, eval_fraction, max_rows=req.tokens)
    n_rows = sum(b - a for a, b in ranges)
    if n_rows == 0:
        raise ValueError(f"store {store.path} has no rows in split {req.split!r} with eval_fraction="
                         f"{eval_fraction}; try --split all, a larger --eval-fraction, or --corpus")
    acc = ActivationMetrics(sae)
    bar = _bar(n_rows, "activations", req.progress)
    batches = heldout.iter_activation_batches(store, ranges, STORE_BATCH_ROWS)
    if sae.cfg.is_transcoder:
        target = heldout.open_transcoder_target_store(sae, store, req.target_store, req.run)
        targets = heldout.iter_activation_batches(target, ranges, STORE_BATCH_ROWS)
        batches = (np.concatenate([x, y], axis=1) for x, y in zip(batches, targets))
        result["target_store"] = str(target.path)
    for x in batches:
        acc.update(x)
        bar.update(len(x))
    bar.close()
    source = f"store {store.path} split {req.split}"
    result.update({"activations_source": source, "store": str(store.path), "split": req.split,
                   "eval_fraction": eval_fraction})

    def windows_fn(lm) -> list[list[int]]:
        # Whole windows only: read a few times the text budget of rows so that enough survive.
        rows = heldout.split_ranges(store, req.split, eval_fraction,
                                    max_rows=max(req.text_tokens * 4, req.text_tokens + 4096))
        m = heldout.read_meta_ranges(store, rows)
        result["text_source"] = source
        return heldout.windows_from_rows(m["token_ids"], m["doc_ids"], m["positions"], lm.tokenizer.bos_id,
                                         req.text_tokens)

    return acc, windows_fn, store.metadata


def _from_corpus(req: EvalRequest, sae, result: dict, lm) -> tuple[ActivationMetrics, Callable, dict]:
    """Metrics over LM activations of corpus text (no store needed), and the same text spliced."""
    import jax.numpy as jnp

    from jaxdict.corpus import open_corpus
    from jaxdict.evaluate.spliced import pad_windows

    if sae.hook is None:
        raise ValueError("the SAE records no hook; give an SAE that does (export --hook) to use --corpus")
    context = req.context or 128
    windows = heldout.windows_from_text(open_corpus(req.corpus), lm.tokenizer, context,
                                        max(req.tokens, req.text_tokens))
    acc = ActivationMetrics(sae)
    bar = _bar(sum(len(w) - 1 for w in windows), "activations", req.progress)
    for b in range(0, len(windows), CORPUS_WINDOWS_PER_PASS):
        if acc.n >= req.tokens:
            break
        ids, mask = pad_windows(windows[b:b + CORPUS_WINDOWS_PER_PASS], lm.tokenizer.pad_id)
        if sae.cfg.is_transcoder:  # rows [x | y]: input and target hook from one forward pass
            both = lm.activations(jnp.asarray(ids), [sae.hook, sae.output_hook], jnp.asarray(mask))
            acts = np.concatenate([np.asarray(both[sae.hook]), np.asarray(both[sae.output_hook])], axis=-1)
        else:
            acts = np.asarray(lm.activations(jnp.asarray(ids), sae.hook, jnp.asarray(mask)))
        keep = mask.copy()
        keep[:, 0] = False  # BOS is not an activation the SAE was trained on
        x = acts[keep][: req.tokens - acc.n]
        acc.update(x)
        bar.update(len(x))
    bar.close()
    result.update({"activations_source": f"LM activations of corpus {req.corpus}", "context": context})

    def windows_fn(_lm) -> list[list[int]]:
        result["text_source"] = f"corpus {req.corpus}"
        return heldout.windows_from_text(open_corpus(req.corpus), lm.tokenizer, context, req.text_tokens)

    return acc, windows_fn, {"model": sae.model}
