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

from jaxdict.corpus import Corpus, Window, iter_windows
from jaxdict.lm.hooks import parse_hook
from jaxdict.lm.language_model import LanguageModel
from jaxdict.sae.axes import DATA, spec

__all__ = ["HarvestConfig", "Window", "harvest", "iter_windows"]


@dataclasses.dataclass(frozen=True)
class HarvestConfig:
    """hooks: hook point names `KIND.L` (jaxdict.lm.hooks); context: window length incl. BOS;
    batch_size: windows per forward pass (rounded up to a multiple of the device count);
    max_tokens: stop once at least this many rows are in every store (None: the whole corpus);
    dtype: store dtype."""

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
    embed_spec = P(DATA, None) if lm.config.vocab_size % n_dev == 0 else P()
    replicated = NamedSharding(mesh, P())
    return {
        "embed": jax.device_put(lm.params["embed"], NamedSharding(mesh, embed_spec)),
        "final_norm": jax.device_put(lm.params["final_norm"], replicated),
        "layers": [jax.device_put(layer, replicated) for layer in lm.params["layers"][:n_blocks]],
    }


@dataclasses.dataclass(frozen=True)
class _Resume:
    """Where each store stands: `start` is the earliest state (None: from the beginning),
    `skip_before[hook]` the windows that store already holds, `tokens` the rows before `start`."""

    start: dict[str, int] | None
    skip_before: dict[str, int]
    tokens: int
    done_before: int

    @classmethod
    def of(cls, writers: dict[str, Any]) -> "_Resume":
        states = {h: w.resume_state for h, w in writers.items()}
        start = _earliest(list(states.values()))
        return cls(start=start, skip_before={h: (s["chunks"] if s else 0) for h, s in states.items()},
                   tokens=0 if start is None else start["tokens"],
                   done_before=min((s or {"tokens": 0})["tokens"] for s in states.values()))


@dataclasses.dataclass(frozen=True)
class _Device:
    """The LM placed on a one-axis mesh over every local device, and its batch of windows."""

    lm: LanguageModel
    hooks: tuple[str, ...]
    batch: int  # windows per forward pass: a multiple of the device count
    context: int
    in_sharding: NamedSharding

    @classmethod
    def place(cls, lm: LanguageModel, config: HarvestConfig) -> "_Device":
        devices = jax.devices()
        mesh = Mesh(np.array(devices), (DATA,))
        n_blocks = max(parse_hook(h, lm.config.n_layers) for h in config.hooks) + 1
        return cls(lm=dataclasses.replace(lm, params=_place_params(lm, mesh, n_blocks)), hooks=config.hooks,
                   batch=-(-config.batch_size // len(devices)) * len(devices), context=config.context,
                   in_sharding=NamedSharding(mesh, spec("batch", None)))

    def dispatch(self, group: list[Window]) -> tuple[np.ndarray, Any]:
        """(ids [batch, context], activations per hook), the latter still computing on device."""
        ids = np.full((self.batch, self.context), self.lm.tokenizer.pad_id, np.int32)
        mask = np.zeros((self.batch, self.context), bool)
        for r, w in enumerate(group):
            ids[r, :len(w.ids)], mask[r, :len(w.ids)] = w.ids, True
        acts = self.lm.activations(jax.device_put(ids, self.in_sharding), list(self.hooks),
                                   mask=jax.device_put(mask, self.in_sharding))
        return ids, acts


def _check_can_harvest(lm: LanguageModel, corpus: Corpus, config: HarvestConfig) -> None:
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


def _open_stores(lm: LanguageModel, corpus: Corpus, out_dir: Path, config: HarvestConfig) -> dict[str, Any]:
    from jaxdict.store import StoreWriter

    meta = {"model": lm.name, "context_length": config.context, "corpus": corpus.description}
    return {hook: StoreWriter.open(str(out_dir / hook), d_in=lm.config.d_model, dtype=config.dtype,
                                   metadata={**meta, "hook": hook}, shard_rows=config.shard_rows)
            for hook in config.hooks}


def _groups(windows: Iterator[Window], batch: int, max_tokens: int | None,
            tokens: int) -> Iterator[tuple[list[Window], dict[str, int]]]:
    """Windows in groups of `batch`, each with the resume state just past it; stops once `tokens`
    (rows so far) reaches `max_tokens`."""
    group: list[Window] = []
    for w in windows:
        if max_tokens is not None and tokens >= max_tokens:
            break
        group.append(w)
        tokens += len(w.ids) - 1
        if len(group) == batch:
            yield group, _state_after(group[-1], tokens)
            group = []
    if group:
        yield group, _state_after(group[-1], tokens)


def _pipelined(device: _Device, groups: Iterator[tuple[list[Window], dict[str, int]]]):
    """(group, state, ids, activations), dispatched one group ahead: the device works on a group
    while the previous one is written."""
    pending = None
    for group, state in groups:
        job = (group, state, *device.dispatch(group))
        if pending is not None:
            yield pending
        pending = job
    if pending is not None:
        yield pending


def _write_group(writers: dict[str, Any], resume: _Resume, group: list[Window], state: dict[str, int],
                 ids: np.ndarray, acts: Any) -> int:
    """Append the real tokens of `group` (no BOS, no padding) to each store that lacks them;
    returns the rows of the group."""
    C = ids.shape[1]
    lengths = np.array([len(w.ids) for w in group])
    positions = np.arange(C)[None, :]
    keep = (positions >= 1) & (positions < lengths[:, None])
    doc = np.repeat(np.array([w.doc_id for w in group], np.int64)[:, None], C, axis=1)
    first = np.array([w.ordinal for w in group])
    for hook, writer in writers.items():
        if state["chunks"] <= resume.skip_before[hook]:
            # This store already holds the whole group. Appending nothing with this earlier
            # state would move its resume point back, and a later crash would duplicate rows.
            continue
        own = keep & (first >= resume.skip_before[hook])[:, None]  # skip windows it already has
        x = np.asarray(acts[hook][:len(group)])
        writer.append(x[own], ids[:len(group)][own], doc[own],
                      np.broadcast_to(positions, own.shape)[own].astype(np.int32), user_state=state)
    return int(keep.sum())


def harvest(lm: LanguageModel, corpus: Corpus, out_dir: str | Path, config: HarvestConfig,
            progress: bool = True) -> dict[str, Any]:
    """Write activations at `config.hooks` for `corpus` into `<out_dir>/<hook>/`; resumable.

    Returns a summary: tokens written this run, total tokens, seconds, tokens_per_s, windows,
    padding_frac, skipped_bad_utf8, and the store paths.
    """
    from tqdm import tqdm

    _check_can_harvest(lm, corpus, config)
    out_dir = Path(out_dir)
    writers = _open_stores(lm, corpus, out_dir, config)
    resume = _Resume.of(writers)
    device = _Device.place(lm, config)
    windows = iter_windows(lm.tokenizer, corpus, config.context, resume.start)
    bar = tqdm(total=config.max_tokens, initial=resume.tokens, unit="tok", unit_scale=True,
               disable=not progress, desc="harvest", smoothing=0.1)
    t0 = time.perf_counter()
    rows = n_windows = n_groups = 0
    for group, state, ids, acts in _pipelined(device, _groups(windows, device.batch, config.max_tokens,
                                                              resume.tokens)):
        written = _write_group(writers, resume, group, state, ids, acts)
        rows, n_windows, n_groups = rows + written, n_windows + len(group), n_groups + 1
        bar.update(written)
    for w in writers.values():
        w.close()
    bar.close()
    seconds = time.perf_counter() - t0
    total = min(w.rows_published for w in writers.values())
    if total == 0:
        raise ValueError(f"corpus {corpus.spec!r} produced no tokens to harvest")
    slots = n_groups * device.batch * config.context
    return {
        "tokens": rows, "total_tokens": total, "tokens_before": resume.done_before,
        "seconds": seconds, "tokens_per_s": rows / seconds if seconds > 0 else 0.0,
        "windows": n_windows, "batch_size": device.batch, "context": config.context,
        "padding_frac": 1.0 - rows / slots if slots else 0.0,
        "skipped_bad_utf8": corpus.skipped_bad_utf8,
        "devices": len(jax.devices()), "stores": {h: str(out_dir / h) for h in writers},
    }
