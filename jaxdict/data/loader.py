"""ActivationLoader: shuffled global batches of activations, per-process sharded, exactly resumable."""
from __future__ import annotations

import json
from typing import Any, Iterator

import grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxdict.data.slabs import RowSource, SlabSource, window_dataset
from jaxdict.sae.axes import DATA, spec

STATE_FORMAT = "jaxdict.loader_state"
STATE_VERSION = 1


class ActivationLoader:
    """Batches of `global_batch_size` rows from `source`, shuffled (slab order + rows in a window).

    Iterating yields global jax.Arrays [global_batch_size, d_in] sharded as
    NamedSharding(mesh, P("data", None)); each process reads only its own global_batch_size /
    process_count rows. `iter_local()` yields those local numpy batches instead (and works with
    process_index/process_count given explicitly, to simulate several processes in one).

    num_epochs=None repeats forever; an int stops after
    floor(num_epochs * (S // process_count) * slab_rows / local_batch) batches, the same on every
    process, S = source.n_rows // slab_rows. shuffle_buffer_rows: rows mixed together in one
    window (rounded down to whole slabs, at least one).
    """

    def __init__(
        self,
        source: RowSource,
        global_batch_size: int,
        mesh: Mesh | None = None,
        seed: int = 0,
        num_epochs: int | None = None,
        slab_rows: int = 4096,
        shuffle_buffer_rows: int = 32768,
        dtype: Any = np.float32,
        *,
        process_index: int | None = None,
        process_count: int | None = None,
        read_threads: int = 2,
        prefetch_windows: int = 2,
    ):
        self.process_count = jax.process_count() if process_count is None else int(process_count)
        self.process_index = jax.process_index() if process_index is None else int(process_index)
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(
                f"process_index must be in [0, {self.process_count}), got {self.process_index}")
        for name, value in [("global_batch_size", global_batch_size), ("slab_rows", slab_rows),
                            ("shuffle_buffer_rows", shuffle_buffer_rows),
                            ("read_threads", read_threads), ("prefetch_windows", prefetch_windows)]:
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if num_epochs is not None and (not isinstance(num_epochs, int) or num_epochs < 1):
            raise ValueError(f"num_epochs must be None (repeat) or an int >= 1, got {num_epochs!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if global_batch_size % self.process_count:
            raise ValueError(
                f"global_batch_size={global_batch_size} must be divisible by the process count "
                f"{self.process_count}")
        if mesh is not None:
            if DATA not in mesh.axis_names:
                raise ValueError(f"mesh must have a {DATA!r} axis, got axes {mesh.axis_names}")
            if global_batch_size % mesh.shape[DATA]:
                raise ValueError(
                    f"global_batch_size={global_batch_size} must be divisible by the mesh's data "
                    f"axis size {mesh.shape[DATA]}")
        self.source = source
        self.mesh = mesh
        self.global_batch_size = int(global_batch_size)
        self.local_batch_size = self.global_batch_size // self.process_count
        self.seed = int(seed)
        self.num_epochs = num_epochs
        self.slab_rows = int(slab_rows)
        self.window_slabs = max(1, int(shuffle_buffer_rows) // self.slab_rows)
        self.dtype = np.dtype(dtype)
        self.read_threads = int(read_threads)
        self.prefetch_windows = int(prefetch_windows)
        self.slabs = SlabSource(source, self.slab_rows, self.dtype)
        self.slabs_per_process_epoch = len(self.slabs) // self.process_count
        if self.slabs_per_process_epoch == 0:
            raise ValueError(
                f"{source!r} has {source.n_rows} rows = {len(self.slabs)} slabs of "
                f"slab_rows={self.slab_rows}, fewer than one per process "
                f"({self.process_count} processes); lower slab_rows")
        rows_per_epoch = self.slabs_per_process_epoch * self.slab_rows
        self.num_batches: int | None = (
            None if num_epochs is None else num_epochs * rows_per_epoch // self.local_batch_size)
        if self.num_batches == 0:
            raise ValueError(
                f"{num_epochs} epoch(s) give each process {num_epochs * rows_per_epoch} rows, "
                f"less than one local batch of {self.local_batch_size}")

    @property
    def d_in(self) -> int:
        return self.source.d_in

    @property
    def batches_per_epoch(self) -> float:
        """Batches per epoch (per process, equal on all), fractional when an epoch ends mid-batch."""
        return self.slabs_per_process_epoch * self.slab_rows / self.local_batch_size

    def _fingerprint(self) -> dict:
        return {
            "n_rows": self.source.n_rows, "d_in": self.d_in, "seed": self.seed,
            "num_epochs": self.num_epochs, "slab_rows": self.slab_rows,
            "window_slabs": self.window_slabs, "global_batch_size": self.global_batch_size,
            "process_index": self.process_index, "process_count": self.process_count,
        }

    def _windows(self) -> grain.DatasetIterator:
        ds = window_dataset(
            self.slabs, seed=self.seed, process_index=self.process_index,
            process_count=self.process_count, num_epochs=self.num_epochs,
            window_slabs=self.window_slabs)
        # grain wants a buffer at least as deep as its thread count, or threads sit idle.
        options = grain.ReadOptions(
            num_threads=self.read_threads,
            prefetch_buffer_size=max(self.prefetch_windows, self.read_threads))
        return iter(ds.to_iter_dataset(options))

    def iter_local(self) -> "LoaderIterator":
        """Iterator over this process's local numpy batches [local_batch_size, d_in]."""
        return LoaderIterator(self, global_arrays=False)

    def __iter__(self) -> "LoaderIterator":
        if self.process_count != jax.process_count():
            raise ValueError(
                f"global arrays need process_count == jax.process_count() "
                f"({self.process_count} != {jax.process_count()}); use iter_local() to simulate")
        return LoaderIterator(self, global_arrays=True)


class LoaderIterator(Iterator):
    """Iterator with `get_state()` / `set_state()`: JSON-serialisable, resumes batch for batch."""

    def __init__(self, loader: ActivationLoader, global_arrays: bool):
        self.loader = loader
        self._global = global_arrays
        self._windows = loader._windows()
        self._window: np.ndarray | None = None
        self._window_state = self._windows.get_state()  # grain state *before* the current window
        self._offset = 0
        self._batches = 0
        self._closed = False
        if global_arrays:
            mesh = loader.mesh
            if mesh is None:
                mesh = jax.make_mesh((jax.device_count(),), (DATA,))
            self._sharding = NamedSharding(mesh, spec("batch", "d_in"))
            self._check_local_rows()

    def _check_local_rows(self) -> None:
        """Each process must hold a distinct 1/process_count of the batch rows on its devices."""
        b = self.loader.global_batch_size
        index_map = self._sharding.addressable_devices_indices_map((b, self.loader.d_in))
        row_slices = {idx[0].indices(b)[:2] for idx in index_map.values()}
        local_rows = sum(hi - lo for lo, hi in row_slices)
        if local_rows != self.loader.local_batch_size:
            raise ValueError(
                f"this process's devices hold {local_rows} of the {b} batch rows under the mesh's "
                f"'data' axis, but the loader gives each of {self.loader.process_count} processes "
                f"{self.loader.local_batch_size}; lay the mesh out so that each process owns an "
                f"equal, distinct part of the 'data' axis")

    def _next_window(self) -> bool:
        self._window_state = self._windows.get_state()
        try:
            self._window = next(self._windows)
        except StopIteration:
            self._window = None
            return False
        self._offset = 0
        return True

    def next_local(self) -> np.ndarray:
        """The next local batch [local_batch_size, d_in] as numpy."""
        loader = self.loader
        if self._closed:
            raise ValueError("this loader iterator was closed; make a new one (and set_state)")
        if loader.num_batches is not None and self._batches >= loader.num_batches:
            raise StopIteration
        need, parts = loader.local_batch_size, []
        while need:
            if self._window is None or self._offset == len(self._window):
                if not self._next_window():
                    raise RuntimeError("window stream ended before num_batches; loader bug")
            take = min(need, len(self._window) - self._offset)
            parts.append(self._window[self._offset : self._offset + take])
            self._offset += take
            need -= take
        self._batches += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __next__(self) -> jax.Array | np.ndarray:
        local = self.next_local()
        if not self._global:
            return local
        shape = (self.loader.global_batch_size, local.shape[1])
        return jax.make_array_from_process_local_data(self._sharding, local, shape)

    def close(self) -> None:
        """Stop the reader threads and drop prefetched windows."""
        self._windows.close()
        self._window = None
        self._closed = True

    def __enter__(self) -> "LoaderIterator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get_state(self) -> dict:
        """JSON-serialisable position: the next batch after set_state is the next batch now."""
        state = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "batches_yielded": self._batches,
            "window_state": self._window_state,
            "offset_in_window": self._offset if self._window is not None else 0,
            "loader": self.loader._fingerprint(),
        }
        json.dumps(state)  # fail here, not in the checkpointer, if grain's state ever is not JSON
        return state

    def set_state(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a jaxdict loader state (format {state.get('format')!r}, "
                             f"expected {STATE_FORMAT!r})" if isinstance(state, dict)
                             else f"loader state must be a dict, got {type(state).__name__}")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r}; this jaxdict reads "
                             f"version {STATE_VERSION}")
        mine = self.loader._fingerprint()
        for key, value in mine.items():
            if state["loader"].get(key) != value:
                raise ValueError(
                    f"loader state was saved with {key}={state['loader'].get(key)!r} but this "
                    f"loader has {key}={value!r}; the stream would not continue where it stopped")
        self._windows.set_state(state["window_state"])
        self._window = None
        self._batches = int(state["batches_yielded"])
        offset = int(state["offset_in_window"])
        if offset:
            if not self._next_window():
                raise ValueError("loader state points past the end of the stream")
            self._offset = offset
        else:
            self._window_state = state["window_state"]
