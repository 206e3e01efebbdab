"""Atomic writes of small local files: a complete, fsynced temporary file beside the target, then
`os.replace`, so a reader (or a crash) sees either the old file or the new one, never half of one.

Every JSON or CSV file that jaxdict rewrites in place (run config and result, sweep marker and
results table, scaling fit, store header and manifest parts) is written through here; the store
sends non-local URLs to its object store instead (jaxdict/store/blobs.py).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def durable_temp_beside(target: str | os.PathLike, data: bytes) -> str:
    """A complete, fsynced temporary file in `target`'s folder (created) holding `data`; its path."""
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(target)}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    tmp = durable_temp_beside(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, value: Any, *, indent: int | None = 2,
                      sort_keys: bool = False, allow_nan: bool = True) -> None:
    """`value` as JSON (with a final newline) at `path`, atomically."""
    write_text_atomic(path, json.dumps(value, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan) + "\n")


def read_json_file(path: str | os.PathLike) -> Any | None:
    """The parsed JSON at `path`, or None when there is no such file."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None
