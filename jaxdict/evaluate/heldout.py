"""The held-out documents of an activation store and their token windows, without grain.

`jaxdict.data` imports grain (its loader), which the evaluator must not (DESIGN §2); the split
comes from `jaxdict.store.split`, which the loader uses too.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from jaxdict.store.split import SPLITS, doc_unit_hash, mask_runs, split_mask  # noqa: F401 (re-exported)

# The same split as the training loader's: one definition in the grain-free jaxdict.store.split.
in_split = split_mask


def resolve_eval_fraction(sae, given: float | None) -> float:
    """`given`, else the held-out fraction the SAE's run used while training, else 0.01."""
    if given is not None:
        return float(given)
    return float(sae.extra.get("eval_fraction") or 0.01)


def resolve_model(sae, given: str | None, store_meta: dict | None = None) -> str:
    """The language model to run with `sae`: `given`, else the SAE's, else its store's; checked
    against the one the SAE was trained on."""
    model = given or sae.model or (store_meta or {}).get("model")
    if model is None:
        where = "neither the SAE nor the store names" if store_meta is not None else "the SAE does not name"
        raise ValueError(f"{where} its model; pass --model")
    sae.check_compatible(model, None, "--model")
    return model


def open_sae_store(sae, store_arg: str | None, run: str, how_else: str = "pass --store PATH"):
    """The activation store an evaluation reads: `store_arg`, else the one the SAE was trained on,
    checked to hold the SAE's model, hook and width."""
    from jaxdict.store import open_store

    store_path = store_arg or sae.extra.get("store")
    if store_path is None:
        raise ValueError(f"{run} records no activation store; {how_else}")
    store = open_store(store_path)
    meta = store.metadata
    sae.check_compatible(meta.get("model"), meta.get("hook"), f"store {store_path}")
    if store.d_in != sae.d_in:
        raise ValueError(f"store {store_path} holds d_in={store.d_in} activations; the SAE takes d_in={sae.d_in}")
    return store


def open_transcoder_target_store(sae, input_store, store_arg: str | None, run: str):
    """A transcoder's target store (`store_arg`, else the one it trained on), checked to hold its
    target hook and width and to be row-aligned with `input_store`."""
    from jaxdict.data.paired import check_aligned
    from jaxdict.store import open_store

    path = store_arg or sae.extra.get("target_store")
    if path is None:
        raise ValueError(f"transcoder {run} records no target store; pass --target-store PATH (its "
                         f"{sae.target_hook or 'target hook'} store, row-aligned with {input_store.path})")
    store = open_store(path)
    hook = store.metadata.get("hook")
    if sae.target_hook is not None and hook is not None and hook != sae.target_hook:
        raise ValueError(f"transcoder {run} predicts {sae.target_hook!r}, but store {path} holds {hook!r}")
    if store.d_in != sae.d_out:
        raise ValueError(f"store {path} holds width {store.d_in}; the transcoder's d_out is {sae.d_out}")
    check_aligned(input_store, store)
    return store


def split_ranges(store, split: str, eval_fraction: float, max_rows: int | None = None
                 ) -> list[tuple[int, int]]:
    """[start, stop) row ranges of `store` in `split`, in row order, at most `max_rows` rows."""
    out: list[tuple[int, int]] = []
    total = 0
    for shard in store.shards:
        if max_rows is not None and total >= max_rows:
            break
        doc_ids = store.read_column("doc_ids", shard.start, shard.start + shard.rows)
        for a, b in zip(*mask_runs(in_split(doc_ids, split, eval_fraction), offset=shard.start)):
            a, b = int(a), int(b)
            if max_rows is not None:
                b = min(b, a + max_rows - total)
            if b > a:
                out.append((a, b))
                total += b - a
            if max_rows is not None and total >= max_rows:
                break
    return out


def iter_activation_batches(store, ranges: list[tuple[int, int]], batch_rows: int) -> Iterator[np.ndarray]:
    """Activations of `ranges` in batches of at most `batch_rows` rows."""
    for a, b in ranges:
        for s in range(a, b, batch_rows):
            yield store.read(s, min(b, s + batch_rows))


def read_meta_ranges(store, ranges: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    parts = [store.read_meta(a, b) for a, b in ranges]
    if not parts:
        return {"token_ids": np.zeros(0, np.int32), "doc_ids": np.zeros(0, np.int64),
                "positions": np.zeros(0, np.int32)}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def window_starts(doc_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """bool [n]: rows that begin a harvest window (position 1, a new document, or a gap)."""
    n = len(positions)
    start = np.ones(n, bool)
    if n > 1:
        contiguous = (doc_ids[1:] == doc_ids[:-1]) & (positions[1:] == positions[:-1] + 1)
        start[1:] = ~contiguous
    return start


def windows_from_rows(token_ids: np.ndarray, doc_ids: np.ndarray, positions: np.ndarray,
                      bos_id: int, max_tokens: int | None = None) -> list[list[int]]:
    """The harvest's model inputs, rebuilt: [BOS, tokens...] per window, whole windows only.

    The harvester writes each window's tokens at positions 1.. (BOS at 0 is not stored). Windows
    cut by the row range (not starting at position 1) are dropped so that the LM sees exactly the
    contexts that produced the stored activations. `max_tokens` caps the total (whole windows).
    """
    starts = np.flatnonzero(window_starts(doc_ids, positions))
    bounds = list(starts) + [len(token_ids)]
    out: list[list[int]] = []
    total = 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        if positions[a] != 1:
            continue
        if max_tokens is not None and total + (b - a) > max_tokens and out:
            break
        out.append([int(bos_id), *(int(t) for t in token_ids[a:b])])
        total += b - a
    return out


def windows_from_text(corpus, tokenizer, context: int, max_tokens: int) -> list[list[int]]:
    """[BOS, up to context-1 tokens] windows of `corpus`, cut as the harvester cuts them
    (jaxdict.corpus.iter_windows), `max_tokens` tokens in all (the last window cut short)."""
    from jaxdict.corpus import iter_windows

    out: list[list[int]] = []
    total = 0
    for window in iter_windows(tokenizer, corpus, context):
        if total >= max_tokens:
            break
        out.append(window.ids[: 1 + max_tokens - total])
        total += len(out[-1]) - 1
    return out
