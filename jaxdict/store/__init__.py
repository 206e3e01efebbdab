"""Activation store: TensorStore zarr3 arrays of activations plus token/doc/position ids, a manifest
of published shards and running statistics. See layout.py for the on-disk format.

    w = StoreWriter.open(path, d_in=640, dtype="bfloat16", metadata={"model": ..., "hook": ...})
    w.append(acts, token_ids, doc_ids, positions, user_state={...}); w.close()
    store = open_store(path); store.read(0, 1024)
"""
from jaxdict.store.errors import (
    CorruptShardError,
    ManifestMismatchError,
    StoreError,
    StoreIncompatibleError,
    StoreNotFoundError,
)
from jaxdict.store.manifest import ShardInfo
from jaxdict.store.reader import ActivationStore, open_store
from jaxdict.store.verify import ShardProblem, verify_store
from jaxdict.store.writer import StoreWriter

__all__ = [
    "ActivationStore",
    "CorruptShardError",
    "ManifestMismatchError",
    "ShardInfo",
    "ShardProblem",
    "StoreError",
    "StoreIncompatibleError",
    "StoreNotFoundError",
    "StoreWriter",
    "open_store",
    "verify_store",
]
