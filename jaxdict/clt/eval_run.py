"""A CLT run folder evaluated end to end for `jaxdict eval` (the CLT counterpart of
jaxdict.evaluate.evaluation): held-out rows of its 2L stores (the run's own data.store and
data.eval_fraction unless overridden), the decoder mass, and the replacement model on the text of
the same held-out rows. Writes eval.json and eval.txt (the printed tables)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from jaxdict.clt.evaluate import (PER_LAYER_SHARE, decoder_mass, heldout_metrics, replacement_metrics)
from jaxdict.clt.run import load_clt_run
from jaxdict.evaluate import heldout

STORE_BATCH_ROWS = 1024  # rows of all 2L stores per batch: 1024 × 36 × 640 × 4 B ≈ 94 MB at L = 18


def open_clt_stores(root: str | Path, n_layers: int, d_model: int) -> list:
    """The 2L stores resid_mid.0 … mlp_out.{L−1} under `root`, each checked for width and
    row-alignment with resid_mid.0."""
    from jaxdict.data.multi import clt_store_paths
    from jaxdict.data.paired import check_aligned
    from jaxdict.store import open_store

    stores = [open_store(p) for p in clt_store_paths(root, n_layers)]
    for store in stores:
        if store.d_in != d_model:
            raise ValueError(f"store {store.path} holds width {store.d_in}; the CLT's d_model is {d_model}")
        check_aligned(stores[0], store)
    return stores


def heldout_batches(stores: list, ranges, n_layers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(x [n, L, d] resid_mid, y [n, L, d] mlp_out) raw rows of `ranges`, STORE_BATCH_ROWS at a time."""
    for a, b in ranges:
        for s in range(a, b, STORE_BATCH_ROWS):
            e = min(b, s + STORE_BATCH_ROWS)
            rows = np.stack([np.asarray(st.read(s, e), np.float32) for st in stores], axis=1)  # [n, 2L, d]
            yield rows[:, :n_layers], rows[:, n_layers:]


def _bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="tok", unit_scale=True, desc=desc, disable=not progress)


def heldout_stores(run, *, store: str | None = None, split: str = "eval", eval_fraction: float | None = None,
                   tokens: int = 200_000) -> tuple[str, float, list, list]:
    """(store root, eval fraction, the 2L stores, row ranges of `split`) for a loaded CLT run: its own
    data.store and data.eval_fraction unless overridden, at most `tokens` rows."""
    cfg, data = run.cfg, run.config.get("data") or {}
    root = store or data.get("store")
    if not root:
        raise ValueError(f"CLT run records no data.store; pass --store ROOT (the folder of its "
                         f"resid_mid.L / mlp_out.L stores)")
    fraction = float(eval_fraction if eval_fraction is not None else data.get("eval_fraction") or 0.01)
    stores = open_clt_stores(root, cfg.n_layers, cfg.d_model)
    ranges = heldout.split_ranges(stores[0], split, fraction, max_rows=tokens)
    if not ranges:
        raise ValueError(f"stores under {root} have no rows in split {split!r} with eval_fraction={fraction}; "
                         "try --split all or a larger --eval-fraction")
    return root, fraction, stores, ranges


def heldout_text_windows(store, split: str, fraction: float, text_tokens: int, bos_id: int) -> list:
    """Token windows (BOS first) of about `text_tokens` held-out tokens, rebuilt from the store's
    token ids, for the replacement model."""
    rows = heldout.split_ranges(store, split, fraction, max_rows=max(text_tokens * 4, text_tokens + 4096))
    m = heldout.read_meta_ranges(store, rows)
    return heldout.windows_from_rows(m["token_ids"], m["doc_ids"], m["positions"], bos_id, text_tokens)


def evaluate_clt(run_dir: str, *, step: int | None = None, store: str | None = None, split: str = "eval",
                 eval_fraction: float | None = None, tokens: int = 200_000, text_tokens: int = 2048,
                 model: str | None = None, batch_size: int = 2, progress: bool = True) -> dict[str, Any]:
    import jaxdict.lm

    run = load_clt_run(run_dir, step)
    cfg = run.cfg
    try:
        root, fraction, stores, ranges = heldout_stores(run, store=store, split=split, eval_fraction=eval_fraction,
                                                        tokens=tokens)
    except ValueError as e:
        raise ValueError(f"{run_dir}: {e}") from e
    result: dict[str, Any] = {"run": str(run_dir), "step": run.step, "model": run.model, "arch": cfg.arch,
                              "n_layers": cfg.n_layers, "n_features": cfg.n_features, "store": str(root),
                              "split": split, "eval_fraction": fraction}
    bar = _bar(sum(b - a for a, b in ranges), "activations", progress)
    result.update(heldout_metrics(run.params, cfg, heldout_batches(stores, ranges, cfg.n_layers), bar.update))
    bar.close()
    result.update(decoder_mass(run.params))
    if text_tokens > 0:
        lm = jaxdict.lm.load(model or run.model or stores[0].metadata.get("model"))
        windows = heldout_text_windows(stores[0], split, fraction, text_tokens, lm.tokenizer.bos_id)
        bar = _bar(sum(len(w) for w in windows), "replacement LM", progress)
        result.update(replacement_metrics(lm, run.params, cfg, windows, batch_size, bar.update))
        bar.close()
        result["text_source"] = f"store {stores[0].path} split {split}"
    return result


SCALARS = {
    "fvu": "mean over output layers of the per-layer fvu of mlp_out.l'",
    "l0": "mean over source layers of active features per token",
    "dead_frac": "mean over layers of the share of features that never fired on these rows",
    "dense_frac": "mean over layers of the share firing on > 10 % of rows",
    "n_tokens": "held-out activation rows",
    "decoder_share_beyond_overall": "Σ‖W_dec[l→l'>l]‖² / Σ‖W_dec[l→l'≥l]‖² (raw units)",
    "delta_ce": "CE of the pure replacement (no error terms) − clean CE",
    "ce_recovered": "(CE_zero − CE_repl) / (CE_zero − CE_clean), all MLPs zeroed as the baseline",
    "kl": "KL(p_clean ‖ p_replacement) per token",
    "delta_ce_with_errors": "the same with the clean pass's error terms (≈ 0: the plumbing check)",
    "kl_with_errors": "≈ 0 likewise",
    "max_logit_diff_with_errors": "max |logit − clean logit| with error terms",
    "ce_clean": "clean next-token CE (nats)",
    "ce_zero_ablation": "CE with every MLP output zeroed",
    "n_text_tokens": "text tokens run through the LM",
}


def format_clt_table(result: dict[str, Any], title: str = "") -> str:
    """The scalar metrics, then one row per layer: fvu of mlp_out.l, L0 of layer l, share of l's
    decoder mass beyond l' = l, and the verdict on cross-layer mass."""
    lines = [title] if title else []
    for key, note in SCALARS.items():
        if key in result:
            v = result[key]
            lines.append(f"{key:<30} {v:>12.5g}  {note}" if isinstance(v, float) else f"{key:<30} {v:>12,}  {note}")
    lines.append("")
    lines.append(f"{'layer':>5}  {'fvu':>9}  {'l0':>8}  {'dead':>6}  {'mass beyond':>11}  {'if uniform':>10}")
    for layer, (fvu, l0, dead, share, uniform) in enumerate(zip(
            result["fvu_per_layer"], result["l0_per_layer"], result["dead_frac_per_layer"],
            result["decoder_share_beyond"], result["decoder_share_beyond_uniform"])):
        lines.append(f"{layer:>5}  {fvu:>9.4f}  {l0:>8.2f}  {dead:>6.3f}  {share:>11.4f}  {uniform:>10.4f}")
    lines.append("(mass beyond: share of layer l's Σ‖W_dec‖² written to l' > l, raw units; if uniform: the share "
                 "with equal mass in each of its output blocks, which the random initialisation has in trained units)")
    share = result["decoder_share_beyond_overall"]
    if result["decoder_share_beyond_uniform_overall"] == 0.0:
        lines.append("\nper-layer transcoders (decoder_span 1): every feature writes to its own layer only")
    elif result["effectively_per_layer_transcoders"]:
        lines.append(f"\nonly {share:.2%} of the decoder mass lies beyond l' = l (< {PER_LAYER_SHARE:.0%}): "
                     "this CLT is effectively per-layer transcoders")
    else:
        lines.append(f"\n{share:.2%} of the decoder mass lies beyond l' = l (equal mass per block would put "
                     f"{result['decoder_share_beyond_uniform_overall']:.2%} there): the cross-layer decoders carry weight")
    return "\n".join(lines)


def write_clt_eval(result: dict[str, Any], out: str | Path, title: str) -> tuple[Path, str]:
    from jaxdict.atomic import write_json_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "eval.json", result, indent=1)
    table = format_clt_table(result, title)
    (out / "eval.txt").write_text(table + "\n")
    return out, table
