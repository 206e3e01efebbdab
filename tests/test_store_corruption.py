"""Corruption, truncation, deletion and manifest disagreement are each detected, naming the shard."""
import json
import os

import numpy as np
import pytest

from jaxdict.store import (
    CorruptShardError,
    ManifestMismatchError,
    StoreWriter,
    open_store,
    verify_store,
)

D = 16
SHARD_ROWS = 32


@pytest.fixture
def store_path(tmp_path):
    path = str(tmp_path / "store")
    rng = np.random.default_rng(0)
    with StoreWriter.open(path, d_in=D, dtype="bfloat16", shard_rows=SHARD_ROWS) as w:
        n = 4 * SHARD_ROWS
        w.append(rng.normal(size=(n, D)), np.arange(n), np.arange(n) // 10, np.arange(n) % 10)
    assert verify_store(open_store(path)) == []
    return path


def _shard_file(path, slot):
    return os.path.join(path, "acts", "c", str(slot), "0")


def _expect_shard_error(path, slot):
    store = open_store(path)
    with pytest.raises(CorruptShardError, match=f"shard slot {slot} ") as info:
        store.read(0, store.n_rows)
    assert info.value.slot == slot
    # the other shards still read
    good = [s for s in store.shards if s.slot != slot][0]
    store.read(good.start, good.start + good.rows)
    problems = verify_store(store)
    assert [p.slot for p in problems] == [slot]
    assert f"shard slot {slot} " in problems[0].message


def test_flipped_bit_is_detected(store_path):
    f = _shard_file(store_path, 2)
    data = bytearray(open(f, "rb").read())
    data[100] ^= 0x04
    open(f, "wb").write(bytes(data))
    _expect_shard_error(store_path, 2)


def test_flipped_bit_in_shard_index_is_detected(store_path):
    f = _shard_file(store_path, 1)
    data = bytearray(open(f, "rb").read())
    data[-10] ^= 0x01
    open(f, "wb").write(bytes(data))
    _expect_shard_error(store_path, 1)


def test_truncated_shard_is_detected(store_path):
    f = _shard_file(store_path, 3)
    size = os.path.getsize(f)
    with open(f, "r+b") as fh:
        fh.truncate(size // 2)
    _expect_shard_error(store_path, 3)


def test_deleted_shard_is_detected_not_read_as_zeros(store_path):
    os.remove(_shard_file(store_path, 0))
    _expect_shard_error(store_path, 0)


def test_deleted_metadata_shard_is_detected(store_path):
    os.remove(os.path.join(store_path, "doc_ids", "c", "1"))
    store = open_store(store_path)
    with pytest.raises(CorruptShardError, match="shard slot 1 .*doc_ids"):
        store.read_meta(0, store.n_rows)
    assert [p.slot for p in verify_store(store)] == [1]


def _edit_json(path, fn):
    value = json.load(open(path))
    fn(value)
    json.dump(value, open(path, "w"))


def test_header_that_disagrees_with_arrays_is_refused(store_path):
    _edit_json(os.path.join(store_path, "store.json"), lambda h: h.update(d_in=D + 1))
    with pytest.raises(ManifestMismatchError, match=r"d_in=17 .*shape \(1099511627776, 16\)"):
        open_store(store_path)


def test_header_dtype_that_disagrees_with_arrays_is_refused(store_path):
    _edit_json(os.path.join(store_path, "store.json"), lambda h: h.update(dtype="float32"))
    with pytest.raises(ManifestMismatchError, match="'float32' but the zarr array holds 'bfloat16'"):
        open_store(store_path)


def test_manifest_checksum_that_disagrees_with_data_is_reported(store_path):
    part = os.path.join(store_path, "manifest", "writer-00000.json")
    _edit_json(part, lambda p: p["shards"][2].update(crc32=p["shards"][2]["crc32"] ^ 1))
    problems = verify_store(open_store(store_path))
    assert [p.slot for p in problems] == [2]
    assert "disagrees with the manifest" in problems[0].message


def test_manifest_claiming_unwritten_rows_is_detected(store_path):
    """The manifest says slot 4 exists, but no data was ever written there."""
    part = os.path.join(store_path, "manifest", "writer-00000.json")

    def add_phantom(p):
        p["shards"].append(dict(p["shards"][0], slot=4))
        p["rows_published"] += SHARD_ROWS
        p["stats"]["count"] += SHARD_ROWS

    _edit_json(part, add_phantom)
    _expect_shard_error(store_path, 4)


def test_manifest_row_counts_that_disagree_are_refused(store_path):
    part = os.path.join(store_path, "manifest", "writer-00000.json")
    _edit_json(part, lambda p: p["shards"][1].update(rows=SHARD_ROWS + 1))
    with pytest.raises(ManifestMismatchError, match="slot 1 claims 33 rows; a shard holds 1..32"):
        open_store(store_path)
