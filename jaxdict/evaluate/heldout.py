"""The held-out documents of an activation store and their token windows, without grain.

`jaxdict.data` imports grain (its loader), which the evaluator must not (DESIGN §2); the split
comes from `jaxdict.store.split`, which the loader uses too.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from jaxdict.store.split import SPLITS, doc_unit_hash, split_mask  # noqa: F401 (re-exported)

# The same split as the training loader's: one definition in the grain-free jaxdict.store.split.
in_split = split_mask


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


def split_ranges(store, split: str, eval_fraction: float, max_rows: int | None = None
                 ) -> list[tuple[int, int]]:
    """[start, stop) row ranges of `store` in `split`, in row order, at most `max_rows` rows."""
    out: list[tuple[int, int]] = []
    total = 0
    for shard in store.shards:
        if max_rows is not None and total >= max_rows:
            break
        doc_ids = store.read_column("doc_ids", shard.start, shard.start + shard.rows)
        keep = in_split(doc_ids, split, eval_fraction).astype(np.int8)
        edges = np.diff(np.concatenate([[0], keep, [0]]))
        for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
            a, b = int(a) + shard.start, int(b) + shard.start
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


def windows_from_text(documents: Iterator[str], tokenizer, context: int, max_tokens: int) -> list[list[int]]:
    """[BOS, up to context-1 tokens] windows cut from documents (as the harvester cuts them)."""
    step = context - 1
    out: list[list[int]] = []
    total = 0
    for text in documents:
        ids = tokenizer.encode(text, add_bos=False)
        for i in range(0, len(ids), step):
            chunk = ids[i:i + step]
            if total >= max_tokens:
                return out
            chunk = chunk[: max_tokens - total]
            out.append([tokenizer.bos_id, *chunk])
            total += len(chunk)
    return out
