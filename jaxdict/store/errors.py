"""Errors raised by the activation store; every message names the bad value and what was expected."""
from __future__ import annotations


class StoreError(Exception):
    """Base class of every activation-store error."""


class StoreNotFoundError(StoreError):
    """The path holds no activation store (no `store.json` header)."""


class StoreIncompatibleError(StoreError):
    """The store's d_in, dtype, shard layout or metadata disagree with what the caller asked for."""


class ManifestMismatchError(StoreError):
    """The manifest disagrees with itself or with the arrays it describes."""


class CorruptShardError(StoreError):
    """A published shard cannot be read back intact (checksum, truncation, missing file)."""

    def __init__(self, message: str, *, slot: int):
        super().__init__(message)
        self.slot = slot
