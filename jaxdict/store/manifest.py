"""The manifest: which slots are published, how many rows each holds, and running statistics.

Each writer process owns one manifest part, `manifest/writer-<w>.json`, and rewrites it atomically
after each shard it completes; nothing else ever writes it, so concurrent writers need no locking.
A reader merges the parts. A shard is therefore visible exactly when its data is fully written,
because a writer publishes the part only after every array write of the shard has completed.

Part schema:
    writer_index, num_writers
    shards: [{slot, rows, crc32, sum_sq_norm}]   crc32 (zlib) over the stored bytes of the slot's
                                                  acts, token_ids, doc_ids, positions, in that order
    stats: {count, sum: [d_in floats], sum_sq_norm}   float64 sums over this writer's rows
    rows_published: rows in this writer's published shards
    resume_state, resume_rows: the last user_state whose rows are all published, and the writer's
                               row count at that state (see writer.py for how resume uses them)
"""
from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from jaxdict.store.blobs import join, list_names, read_json
from jaxdict.store.errors import ManifestMismatchError
from jaxdict.store.layout import MANIFEST_DIR

PART_PREFIX = "writer-"


def part_path(path: str, writer_index: int) -> str:
    return join(path, MANIFEST_DIR, f"{PART_PREFIX}{writer_index:05d}.json")


def empty_part(writer_index: int, num_writers: int, d_in: int) -> dict:
    return {
        "writer_index": writer_index,
        "num_writers": num_writers,
        "shards": [],
        "stats": {"count": 0, "sum": [0.0] * d_in, "sum_sq_norm": 0.0},
        "rows_published": 0,
        "resume_state": None,
        "resume_rows": 0,
    }


def shard_checksum(acts: np.ndarray, token_ids: np.ndarray, doc_ids: np.ndarray,
                   positions: np.ndarray) -> int:
    crc = 0
    for a in (acts, token_ids, doc_ids, positions):
        crc = zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1), crc)
    return crc


def shard_stats(acts: np.ndarray) -> tuple[np.ndarray, float]:
    """float64 (sum over rows [d], sum of squared row norms) of the stored values."""
    # via float32: exact for bf16 and fp32, and numpy's native float32->float64 cast is several
    # times faster than ml_dtypes' bfloat16->float64 one
    x = acts.astype(np.float32).astype(np.float64)
    return x.sum(axis=0), float(np.einsum("nd,nd->", x, x))


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One published slot: `rows` rows at store rows [slot*shard_rows, ...), logical rows [start, start+rows)."""

    slot: int
    writer: int
    rows: int
    start: int
    crc32: int
    sum_sq_norm: float


def read_parts(path: str) -> list[dict]:
    parts = []
    for name in list_names(join(path, MANIFEST_DIR)):
        if name.startswith(PART_PREFIX) and name.endswith(".json"):
            part = read_json(join(path, MANIFEST_DIR, name))
            if part is not None:
                part["_name"] = name
                parts.append(part)
    return parts


def merge_parts(path: str, header: dict, parts: list[dict]) -> tuple[list[ShardInfo], dict]:
    """Validate the parts against the header and each other; the shard table and merged stats."""
    shard_rows, num_writers, d_in = header["shard_rows"], header["num_writers"], header["d_in"]
    entries = []
    count, total, sq = 0, np.zeros(d_in, np.float64), 0.0
    for part in parts:
        where = f"{join(path, MANIFEST_DIR, part['_name'])}"
        w = part.get("writer_index")
        if part.get("num_writers") != num_writers or not isinstance(w, int) or not 0 <= w < num_writers:
            raise ManifestMismatchError(
                f"{where}: writer {w!r} of {part.get('num_writers')!r} does not fit the store "
                f"header's num_writers={num_writers}"
            )
        stats = part["stats"]
        if len(stats["sum"]) != d_in:
            raise ManifestMismatchError(
                f"{where}: stats.sum has {len(stats['sum'])} entries but the store d_in is {d_in}"
            )
        rows = 0
        for s in part["shards"]:
            slot, n = s["slot"], s["rows"]
            if slot % num_writers != w:
                raise ManifestMismatchError(
                    f"{where}: shard slot {slot} does not belong to writer {w} of {num_writers}"
                )
            if not 0 < n <= shard_rows:
                raise ManifestMismatchError(
                    f"{where}: shard slot {slot} claims {n} rows; a shard holds 1..{shard_rows}"
                )
            rows += n
            entries.append((slot, w, n, int(s["crc32"]), float(s["sum_sq_norm"])))
        if rows != part["rows_published"] or rows != stats["count"]:
            raise ManifestMismatchError(
                f"{where}: shards hold {rows} rows but rows_published={part['rows_published']} "
                f"and stats.count={stats['count']}"
            )
        count += stats["count"]
        total += np.asarray(stats["sum"], np.float64)
        sq += stats["sum_sq_norm"]
    entries.sort()
    slots = [e[0] for e in entries]
    if len(set(slots)) != len(slots):
        raise ManifestMismatchError(f"store {path}: a shard slot is published twice: {slots}")
    shards, start = [], 0
    for slot, w, n, crc, ssq in entries:
        shards.append(ShardInfo(slot=slot, writer=w, rows=n, start=start, crc32=crc, sum_sq_norm=ssq))
        start += n
    stats = {
        "count": int(count),
        "mean": total / max(count, 1),
        "mean_sq_norm": sq / max(count, 1),
    }
    return shards, stats
