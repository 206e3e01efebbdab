"""On-disk layout of an activation store: the header, the zarr3 arrays and their TensorStore specs.

    PATH/store.json                 header: d_in, dtype, shard_rows, chunk_rows, num_writers, metadata
    PATH/acts/                      zarr3 [capacity, d_in] bf16|fp32
    PATH/token_ids/ doc_ids/ positions/   zarr3 [capacity] int32 / int64 / int32
    PATH/manifest/writer-00000.json one manifest part per writer process (see manifest.py)

Rows live in fixed *slots* of `shard_rows` rows: slot k covers rows [k*shard_rows, (k+1)*shard_rows)
of every array and is one zarr3 shard file (`acts/c/k/0`). Writer w of n fills slots w, w+n, w+2n, ...
so writers never touch the same file. A slot may be partly filled (a writer's last shard); the
manifest says how many rows each published slot holds, and the reader concatenates published slots
in slot order into one logical row range.

Every inner chunk and every shard index carries a crc32c checksum, and missing chunks are read as
errors (`fill_missing_data_reads: false`), so corruption and truncation raise instead of reading
as zeros.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from jaxdict.store.blobs import join, kvstore_url
from jaxdict.store.errors import StoreIncompatibleError

FORMAT_NAME = "jaxdict.activation_store"
FORMAT_VERSION = 1
HEADER_NAME = "store.json"
MANIFEST_DIR = "manifest"
ACTS = "acts"
META_DTYPES: dict[str, np.dtype] = {
    "token_ids": np.dtype(np.int32),
    "doc_ids": np.dtype(np.int64),
    "positions": np.dtype(np.int32),
}
STORE_DTYPES = ("float32", "bfloat16")
# The arrays are declared this long; zarr allocates nothing for slots that are never written.
CAPACITY_ROWS = 2**40
# Shards of about 64 MiB keep object-store requests large; inner chunks of about 1 MiB keep a
# slab read from decoding much more than it needs. Both are powers of two in rows.
TARGET_SHARD_BYTES = 64 * 2**20
TARGET_CHUNK_BYTES = 2**20


def itemsize(dtype: str) -> int:
    return {"float32": 4, "bfloat16": 2}[dtype]


def numpy_dtype(dtype: str) -> np.dtype:
    if dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(np.float32)


def check_dtype(dtype: str) -> str:
    if dtype not in STORE_DTYPES:
        raise ValueError(f"store dtype must be one of {STORE_DTYPES}, got {dtype!r}")
    return dtype


def _floor_pow2(x: float) -> int:
    return 1 << max(0, int(np.floor(np.log2(max(x, 1.0)))))


def default_shard_rows(d_in: int, dtype: str) -> int:
    return _floor_pow2(TARGET_SHARD_BYTES / (d_in * itemsize(dtype)))


def chunk_rows_for(shard_rows: int, d_in: int, dtype: str) -> int:
    """The largest divisor of shard_rows whose chunk stays within TARGET_CHUNK_BYTES (at least 1)."""
    target = max(1, TARGET_CHUNK_BYTES // (d_in * itemsize(dtype)))
    best = 1
    i = 1
    while i * i <= shard_rows:
        if shard_rows % i == 0:
            for c in (i, shard_rows // i):
                if c <= target and c > best:
                    best = c
        i += 1
    return best


def make_header(d_in: int, dtype: str, shard_rows: int, num_writers: int, metadata: dict) -> dict:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "d_in": int(d_in),
        "dtype": dtype,
        "shard_rows": int(shard_rows),
        "chunk_rows": chunk_rows_for(shard_rows, d_in, dtype),
        "num_writers": int(num_writers),
        "metadata": metadata,
    }


def check_header(header: Any, path: str) -> dict:
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise StoreIncompatibleError(
            f"{join(path, HEADER_NAME)} is not a jaxdict activation store header "
            f"(format {header.get('format') if isinstance(header, dict) else header!r}, "
            f"expected {FORMAT_NAME!r})"
        )
    if header.get("version") != FORMAT_VERSION:
        raise StoreIncompatibleError(
            f"store {path} has format version {header.get('version')!r}; this jaxdict reads "
            f"version {FORMAT_VERSION}"
        )
    return header


def _sharded_codecs(chunk_shape: list[int]) -> list[dict]:
    plain = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]
    return [
        {
            "name": "sharding_indexed",
            "configuration": {
                "chunk_shape": chunk_shape,
                "codecs": plain,
                "index_codecs": plain,
                "index_location": "end",
            },
        }
    ]


def array_spec(path: str, name: str, header: dict, *, create: bool) -> dict:
    """TensorStore spec of one store array; `create` also opens it if it already exists."""
    d_in, shard_rows = header["d_in"], header["shard_rows"]
    if name == ACTS:
        shape, shard, chunk = (
            [CAPACITY_ROWS, d_in],
            [shard_rows, d_in],
            [header["chunk_rows"], d_in],
        )
        data_type = header["dtype"]
    else:
        shape, shard, chunk = [CAPACITY_ROWS], [shard_rows], [shard_rows]
        data_type = META_DTYPES[name].name
    spec: dict[str, Any] = {
        "driver": "zarr3",
        "kvstore": kvstore_url(join(path, name)),
        "fill_missing_data_reads": False,
        # Without this TensorStore skips writing chunks that equal the fill value (e.g. a shard of
        # one document whose doc_ids are all 0), and such a chunk would then read as "missing".
        "store_data_equal_to_fill_value": True,
    }
    if create:
        spec.update(
            create=True,
            open=True,
            metadata={
                "shape": shape,
                "data_type": data_type,
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": shard}},
                "chunk_key_encoding": {"name": "default"},
                "codecs": _sharded_codecs(chunk),
            },
        )
    else:
        spec.update(open=True)
    return spec


def shard_file(name: str, slot: int) -> str:
    """The key of slot `slot`'s shard file inside the store (default zarr3 chunk key encoding)."""
    return f"{name}/c/{slot}/0" if name == ACTS else f"{name}/c/{slot}"
