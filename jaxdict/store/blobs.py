"""Small JSON blobs (store header, manifest parts) on a local path or any TensorStore kvstore URL.

Local paths are written atomically by jaxdict.atomic (temporary file + fsync + `os.replace`), so a
reader sees either the old or the new file, never half of one. Other URLs (`gs://...`) go through TensorStore's kvstore,
whose single-object writes are atomic on object stores.
"""
from __future__ import annotations

import json
import os
from typing import Any

import tensorstore as ts

from jaxdict.atomic import durable_temp_beside, write_bytes_atomic


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def local_path(path: str) -> str:
    return os.path.abspath(path[len("file://"):] if path.startswith("file://") else path)


def join(path: str, *parts: str) -> str:
    return "/".join([path.rstrip("/"), *parts])


def kvstore_url(path: str) -> str:
    """A TensorStore kvstore URL (with trailing slash) for a directory-like path."""
    if is_local(path):
        return "file://" + local_path(path).rstrip("/") + "/"
    return path.rstrip("/") + "/"


# One TensorStore context for every store opened in this process: shared cache and I/O limits, and
# a `memory://` store (used in tests for the object-store code path) is the same store each time.
CONTEXT = ts.Context()


def _kv(directory: str) -> ts.KvStore:
    return ts.KvStore.open(kvstore_url(directory), context=CONTEXT).result()


def read_json(path: str) -> Any | None:
    """The parsed JSON at `path`, or None if there is no such file/object."""
    if is_local(path):
        try:
            with open(local_path(path), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
    else:
        directory, _, name = path.rstrip("/").rpartition("/")
        result = _kv(directory).read(name).result()
        if result.state != "value":
            return None
        data = result.value
    return json.loads(data.decode("utf-8"))


def _encode(value: Any) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True).encode("utf-8")


def write_json_atomic(path: str, value: Any) -> None:
    data = _encode(value)
    if is_local(path):
        write_bytes_atomic(local_path(path), data)
    else:
        directory, _, name = path.rstrip("/").rpartition("/")
        _kv(directory).write(name, data).result()


def create_json_exclusive(path: str, value: Any) -> bool:
    """Write `value` at `path` only if nothing is there yet; True if this call created it.

    Locally this is `os.link` of a complete temporary file, which fails if the target exists, so two
    writers creating the same store at once agree on one header. On object stores the check and the
    write are separate steps; the header is validated on every open, so a lost race is still caught.
    """
    if is_local(path):
        tmp = durable_temp_beside(local_path(path), _encode(value))
        try:
            os.link(tmp, local_path(path))
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True
    if read_json(path) is not None:
        return False
    write_json_atomic(path, value)
    return True


def list_names(directory: str) -> list[str]:
    """Names of the files/objects directly under `directory` (empty if it does not exist)."""
    if is_local(directory):
        try:
            return sorted(os.listdir(local_path(directory)))
        except FileNotFoundError:
            return []
    keys = _kv(directory).list().result()
    return sorted(k.decode("utf-8") for k in keys if b"/" not in k)
