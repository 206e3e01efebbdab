"""Harvest: run the LM over a corpus and write residual-stream activations into activation stores.

Sequences are **cut, not packed**: each document is tokenised on its own and split into windows
of `context - 1` tokens, each window preceded by BOS and right-padded to `context`. Every
activation therefore sees only its own document, from a BOS, as in the model's pre-training
format, with no cross-document attention; and a window is a clean unit of resumption. The cost is
padding on documents shorter than the context (reported as `padding_frac`).

Rows written per real token (BOS and padding are not written): acts [d], token_ids, doc_ids (the
document's index in the corpus) and positions (the token's position in the model's context
window, 1..context-1, BOS being 0). One store per hook at `<out>/<hook>/`.

Resume: every append carries `user_state = {"chunks": windows done, "doc": next document,
"chunk_in_doc": next window of that document, "tokens": rows so far}`. On restart each store's
writer reports the last durable state; the run restarts from the earliest of them and feeds each
store only the windows past its own state, so every row lands exactly once (jaxdict.store.writer).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdict.corpus import Corpus
from jaxdict.lm.language_model import LanguageModel, parse_hook
from jaxdict.lm.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class HarvestConfig:
    """hooks: "resid_post.L" names; context: window length incl. BOS; batch_size: windows per
    forward pass (rounded up to a multiple of the device count); max_tokens: stop once at least
    this many rows are in every store (None: the whole corpus); dtype: store dtype."""

    hooks: tuple[str, ...]
    context: int = 128
    batch_size: int = 32
    max_tokens: int | None = None
    dtype: str = "float32"
    shard_rows: int | None = None

    def __post_init__(self) -> None:
        if not self.hooks:
            raise ValueError("HarvestConfig.hooks is empty; give at least one, e.g. 'resid_post.9'")
        if len(set(self.hooks)) != len(self.hooks):
            raise ValueError(f"HarvestConfig.hooks has duplicates: {list(self.hooks)}")
        if not isinstance(self.context, int) or self.context < 2:
            raise ValueError(f"context must be an int >= 2 (BOS + 1 token), got {self.context!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive int or None, got {self.max_tokens!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")


@dataclasses.dataclass(frozen=True)
class Window:
    """One model input: BOS + up to context-1 tokens of document `doc_id` (window `index`)."""

    ordinal: int  # index in the whole stream of windows
    doc_id: int
    index: int
    ids: list[int]


def iter_windows(tokenizer: Tokenizer, corpus: Corpus, context: int,
                 start: dict[str, int] | None = None) -> Iterator[Window]:
    """The corpus cut into windows, from resume position `start` (a harvest user_state)."""
    ordinal = 0 if start is None else start["chunks"]
    first_doc = 0 if start is None else start["doc"]
    first_index = 0 if start is None else start["chunk_in_doc"]
    step = context - 1
    for doc in corpus.documents(first_doc):
        ids = tokenizer.encode(doc.text, add_bos=False)
        begin = first_index if doc.doc_id == first_doc else 0
        for index in range(begin, -(-len(ids) // step)):
            yield Window(ordinal, doc.doc_id, index,
                         [tokenizer.bos_id, *ids[index * step:(index + 1) * step]])
            ordinal += 1


def _state_after(window: Window, tokens: int) -> dict[str, int]:
    """Resume position just past `window` (iter_windows moves on to the next document when that
    document has no window left)."""
    return {"chunks": window.ordinal + 1, "doc": window.doc_id, "chunk_in_doc": window.index + 1,
            "tokens": tokens}


def _earliest(states: list[dict[str, int] | None]) -> dict[str, int] | None:
    if any(s is None for s in states):
        return None
    return min(states, key=lambda s: s["chunks"])  # type: ignore[arg-type, return-value]


def _place_params(lm: LanguageModel, mesh: Mesh, n_blocks: int) -> dict[str, Any]:
    """Params on the mesh: the blocks in use replicated, the rest dropped, and the embedding
    table split over `data` along the vocabulary (the lookup becomes a masked local gather plus
    an all-reduce; replicating 262144 x 640 floats on every device would cost 671 MB each)."""
    n_dev = mesh.devices.size
    embed_spec = P("data", None) if lm.config.vocab_size % n_dev == 0 else P()
    replicated = NamedSharding(mesh, P())
    return {
        "embed": jax.device_put(lm.params["embed"], NamedSharding(mesh, embed_spec)),
        "final_norm": jax.device_put(lm.params["final_norm"], replicated),
        "layers": [jax.device_put(layer, replicated) for layer in lm.params["layers"][:n_blocks]],
    }


def harvest(lm: LanguageModel, corpus: Corpus, out_dir: str | Path, config: HarvestConfig,
            progress: bool = True) -> dict[str, Any]:
    """Write activations at `config.hooks` for `corpus` into `<out_dir>/<hook>/`; resumable.

    Returns a summary: tokens written this run, total tokens, seconds, tokens_per_s, windows,
    padding_frac, skipped_bad_utf8, and the store paths.
    """
    from tqdm import tqdm

    from jaxdict.store import StoreWriter

    for hook in config.hooks:
        parse_hook(hook, lm.config.n_layers)
    if jax.process_count() > 1:
        # One writer per host and a per-host share of the windows would be needed (the store
        # supports num_writers); until then, refuse rather than write every row once per host.
        raise ValueError(
            f"harvest runs on one host; got jax.process_count() = {jax.process_count()}. Run "
            "`jaxdict harvest` on a single host (its devices are used data-parallel), then share the "
            "store (gs:// paths work) with the training hosts")
    next(iter(corpus.documents()), None)  # an empty corpus fails here, before stores are made
    out_dir = Path(out_dir)
    writers = {}
    for hook in config.hooks:
        meta = {"model": lm.name, "hook": hook, "context_length": config.context,
                "corpus": corpus.description}
        writers[hook] = StoreWriter.open(str(out_dir / hook), d_in=lm.config.d_model,
                                         dtype=config.dtype, metadata=meta,
                                         shard_rows=config.shard_rows)
    states = {h: w.resume_state for h, w in writers.items()}
    start = _earliest(list(states.values()))
    skip_before = {h: (s["chunks"] if s else 0) for h, s in states.items()}
    tokens = 0 if start is None else start["tokens"]
    done_before = min((s or {"tokens": 0})["tokens"] for s in states.values())

    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("data",))
    batch = -(-config.batch_size // len(devices)) * len(devices)
    lm = dataclasses.replace(lm, params=_place_params(lm, mesh, max(
        parse_hook(h, lm.config.n_layers) for h in config.hooks) + 1))
    in_sharding = NamedSharding(mesh, P("data", None))
    C = config.context

    windows = iter_windows(lm.tokenizer, corpus, C, start)
    bar = tqdm(total=config.max_tokens, initial=tokens, unit="tok", unit_scale=True,
               disable=not progress, desc="harvest", smoothing=0.1)
    t0 = time.perf_counter()
    slots = real = n_windows = 0

    def batches() -> Iterator[list[Window]]:
        nonlocal tokens
        current: list[Window] = []
        for w in windows:
            if config.max_tokens is not None and tokens >= config.max_tokens:
                break
            current.append(w)
            tokens += len(w.ids) - 1
            if len(current) == batch:
                yield current
                current = []
        if current:
            yield current

    def dispatch(group: list[Window]) -> tuple[list[Window], np.ndarray, Any]:
        ids = np.full((batch, C), lm.tokenizer.pad_id, np.int32)
        mask = np.zeros((batch, C), bool)
        for r, w in enumerate(group):
            ids[r, :len(w.ids)], mask[r, :len(w.ids)] = w.ids, True
        acts = lm.activations(jax.device_put(ids, in_sharding), list(config.hooks),
                              mask=jax.device_put(mask, in_sharding))
        return group, ids, acts  # computed asynchronously; fetched by `write`

    def write(group: list[Window], ids: np.ndarray, acts: Any, state: dict[str, int]) -> None:
        nonlocal slots, real, n_windows
        lengths = np.array([len(w.ids) for w in group])
        positions = np.arange(C)[None, :]
        keep = (positions >= 1) & (positions < lengths[:, None])  # no BOS, no padding
        doc = np.repeat(np.array([w.doc_id for w in group], np.int64)[:, None], C, axis=1)
        first = np.array([w.ordinal for w in group])
        rows = int(keep.sum())
        for hook, writer in writers.items():
            if state["chunks"] <= skip_before[hook]:
                # This store already holds the whole group. Appending nothing with this earlier
                # state would move its resume point back, and a later crash would duplicate rows.
                continue
            own = keep & (first >= skip_before[hook])[:, None]  # skip windows it already has
            x = np.asarray(acts[hook][:len(group)])
            writer.append(x[own], ids[:len(group)][own], doc[own],
                          np.broadcast_to(positions, own.shape)[own].astype(np.int32),
                          user_state=state)
        slots += batch * C
        real += rows
        n_windows += len(group)
        bar.update(rows)

    pending = None
    for group in batches():
        job = dispatch(group)  # the device works on this group while the previous one is written
        if pending is not None:
            write(*pending)
        pending = (*job, _state_after(group[-1], tokens))
    if pending is not None:
        write(*pending)
    for w in writers.values():
        w.close()
    bar.close()
    seconds = time.perf_counter() - t0
    total = min(w.rows_published for w in writers.values())
    if total == 0:
        raise ValueError(f"corpus {corpus.spec!r} produced no tokens to harvest")
    return {
        "tokens": real, "total_tokens": total, "tokens_before": done_before,
        "seconds": seconds, "tokens_per_s": real / seconds if seconds > 0 else 0.0,
        "windows": n_windows, "batch_size": batch, "context": C,
        "padding_frac": 1.0 - real / slots if slots else 0.0,
        "skipped_bad_utf8": corpus.skipped_bad_utf8,
        "devices": len(devices), "stores": {h: str(out_dir / h) for h in writers},
    }
