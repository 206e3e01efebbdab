"""Activation store: round trips, statistics, publication, validation of re-opens and inputs."""
import ml_dtypes
import numpy as np
import pytest

from jaxdict.store import (
    StoreError,
    StoreIncompatibleError,
    StoreNotFoundError,
    StoreWriter,
    open_store,
    verify_store,
)

D = 12


def _rows(n, seed=0):
    rng = np.random.default_rng(seed)
    acts = rng.normal(size=(n, D)).astype(np.float32) * 3.0
    return acts, np.arange(n, dtype=np.int32), np.arange(n, dtype=np.int64) // 7, np.arange(n) % 7


@pytest.mark.parametrize("dtype,np_dtype", [("float32", np.float32), ("bfloat16", ml_dtypes.bfloat16)])
def test_round_trip(tmp_path, dtype, np_dtype):
    acts, tok, doc, pos = _rows(250)
    w = StoreWriter.open(str(tmp_path), d_in=D, dtype=dtype, metadata={"model": "m", "hook": "h"},
                         shard_rows=64)
    for i in range(0, 250, 40):  # appends that do not line up with shards
        w.append(acts[i:i + 40], tok[i:i + 40], doc[i:i + 40], pos[i:i + 40])
    w.close()
    store = open_store(str(tmp_path))
    assert (store.n_rows, store.d_in, store.dtype) == (250, D, dtype)
    assert [s.rows for s in store.shards] == [64, 64, 64, 58]
    stored = acts.astype(np_dtype)
    got = store.read(0, 250)
    assert got.dtype == np.dtype(np_dtype)
    np.testing.assert_array_equal(got, stored)
    np.testing.assert_array_equal(store.read(60, 130), stored[60:130])  # crosses shards
    meta = store.read_meta(100, 200)
    np.testing.assert_array_equal(meta["token_ids"], tok[100:200])
    np.testing.assert_array_equal(meta["doc_ids"], doc[100:200])
    np.testing.assert_array_equal(meta["positions"], pos[100:200])
    assert meta["doc_ids"].dtype == np.int64 and meta["positions"].dtype == np.int32
    x64 = stored.astype(np.float64)
    st = store.stats
    assert st["count"] == 250
    np.testing.assert_allclose(st["mean"], x64.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(st["mean_sq_norm"], (x64 ** 2).sum(1).mean(), rtol=1e-12)
    assert store.manifest["metadata"] == {"model": "m", "hook": "h"}
    assert store.manifest["dtype"] == dtype and len(store.manifest["shards"]) == 4
    assert verify_store(store) == []


def test_only_complete_shards_are_visible(tmp_path):
    acts, tok, doc, pos = _rows(150)
    w = StoreWriter.open(str(tmp_path), d_in=D, shard_rows=64)
    w.append(acts[:100], tok[:100], doc[:100], pos[:100])
    assert open_store(str(tmp_path)).n_rows == 64  # 36 rows are buffered, not published
    w.append(acts[100:], tok[100:], doc[100:], pos[100:])
    assert open_store(str(tmp_path)).n_rows == 128
    w.close()
    assert open_store(str(tmp_path)).n_rows == 150


def test_resume_in_process_drops_rows_already_held(tmp_path):
    """A writer abandoned mid-shard (no close) + a producer restarting from resume_state."""
    acts, tok, doc, pos = _rows(300)
    batch = 23

    def produce(writer, start_batch, stop_batch):
        for b in range(start_batch, stop_batch):
            s = slice(b * batch, min((b + 1) * batch, 300))
            writer.append(acts[s], tok[s], doc[s], pos[s], user_state={"next_batch": b + 1})

    w = StoreWriter.open(str(tmp_path), d_in=D, shard_rows=50)
    assert w.resume_state is None
    produce(w, 0, 7)  # 161 rows: 3 shards published, 11 rows buffered and lost
    w2 = StoreWriter.open(str(tmp_path), d_in=D, shard_rows=50)
    # the last append whose rows are all in the 150 published rows ends at 138 rows (batch 6)
    assert w2.resume_state == {"next_batch": 6}
    produce(w2, w2.resume_state["next_batch"], 14)
    w2.close()
    store = open_store(str(tmp_path))
    np.testing.assert_array_equal(store.read_meta(0, store.n_rows)["token_ids"], tok)
    np.testing.assert_array_equal(store.read(0, 300), acts)
    assert StoreWriter.open(str(tmp_path), d_in=D).resume_state == {"next_batch": 14}


def test_reopen_with_different_layout_is_refused(tmp_path):
    StoreWriter.open(str(tmp_path), d_in=D, dtype="bfloat16", metadata={"hook": "a"}).close()
    with pytest.raises(StoreIncompatibleError, match=r"d_in=12.*d_in=13"):
        StoreWriter.open(str(tmp_path), d_in=13, dtype="bfloat16")
    with pytest.raises(StoreIncompatibleError, match=r"'bfloat16'.*'float32'"):
        StoreWriter.open(str(tmp_path), d_in=D, dtype="float32")
    with pytest.raises(StoreIncompatibleError, match=r"metadata=\{'hook': 'a'\}.*'hook': 'b'"):
        StoreWriter.open(str(tmp_path), d_in=D, dtype="bfloat16", metadata={"hook": "b"})
    with pytest.raises(StoreIncompatibleError, match="num_writers=1.*num_writers=2"):
        StoreWriter.open(str(tmp_path), d_in=D, dtype="bfloat16", writer_index=1, num_writers=2)


def test_check_compatible_names_both_values(tmp_path):
    acts, tok, doc, pos = _rows(10)
    with StoreWriter.open(str(tmp_path), d_in=D, dtype="bfloat16") as w:
        w.append(acts, tok, doc, pos)
    store = open_store(str(tmp_path))
    store.check_compatible(d_in=D, dtype="bfloat16")
    with pytest.raises(StoreIncompatibleError, match="d_in=12.*d_in=640"):
        store.check_compatible(d_in=640)
    with pytest.raises(StoreIncompatibleError, match="'bfloat16'.*'float32'"):
        store.check_compatible(d_in=D, dtype="float32")


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(StoreNotFoundError, match="no activation store"):
        open_store(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="dtype must be one of.*'float16'"):
        StoreWriter.open(str(tmp_path), d_in=D, dtype="float16")
    with pytest.raises(ValueError, match=r"writer_index must be in \[0, 2\), got 2"):
        StoreWriter.open(str(tmp_path), d_in=D, writer_index=2, num_writers=2)
    w = StoreWriter.open(str(tmp_path), d_in=D, shard_rows=4)
    acts, tok, doc, pos = _rows(4)
    with pytest.raises(ValueError, match=r"shape \[n, 12\], got \(4, 11\)"):
        w.append(acts[:, :11], tok, doc, pos)
    with pytest.raises(ValueError, match=r"doc_ids must have shape \(4,\)"):
        w.append(acts, tok, doc[:3], pos)
    with pytest.raises(ValueError, match="token_ids must be an integer array"):
        w.append(acts, tok.astype(np.float32), doc, pos)
    with pytest.raises(ValueError, match="user_state must be JSON-serialisable"):
        w.append(acts, tok, doc, pos, user_state={"arr": np.zeros(2)})
    acts[2, 5] = np.nan
    with pytest.raises(StoreError, match="1 of 4 rows .* non-finite"):
        w.append(acts, tok, doc, pos)
    store = open_store(str(tmp_path))
    with pytest.raises(IndexError, match=r"\[0, 5\) is outside the store's \[0, 0\)"):
        store.read(0, 5)


def test_object_store_code_path_on_memory_kvstore():
    """A URL path (here TensorStore's in-memory kvstore) goes through the kvstore code, not os."""
    acts, tok, doc, pos = _rows(150)
    url = "memory://jaxdict-test-store/"
    w = StoreWriter.open(url, d_in=D, dtype="bfloat16", shard_rows=64, metadata={"m": 1})
    w.append(acts, tok, doc, pos, user_state={"i": 1})
    w.close()
    store = open_store(url)
    assert store.n_rows == 150 and store.metadata == {"m": 1}
    np.testing.assert_array_equal(store.read(0, 150), acts.astype(ml_dtypes.bfloat16))
    assert verify_store(store) == []
    assert StoreWriter.open(url, d_in=D, dtype="bfloat16").resume_state == {"i": 1}
    with pytest.raises(StoreIncompatibleError, match="d_in=12.*d_in=7"):
        StoreWriter.open(url, d_in=7, dtype="bfloat16")


def test_crash_between_shard_data_and_manifest_write(tmp_path):
    """Shard data on disk but not yet published: invisible, then overwritten on resume."""
    import shutil

    acts, tok, doc, pos = _rows(200)
    part = tmp_path / "manifest" / "writer-00000.json"
    w = StoreWriter.open(str(tmp_path), d_in=D, shard_rows=64)
    w.append(acts[:70], tok[:70], doc[:70], pos[:70], user_state={"next": 70})
    shutil.copy(part, tmp_path / "part-before.json")
    w.append(acts[70:140], tok[70:140], doc[70:140], pos[70:140], user_state={"next": 140})
    assert open_store(str(tmp_path)).n_rows == 128
    # the process "died" after writing slot 1's data, before publishing it
    shutil.copy(tmp_path / "part-before.json", part)
    assert open_store(str(tmp_path)).n_rows == 64
    w2 = StoreWriter.open(str(tmp_path), d_in=D, shard_rows=64)
    assert w2.resume_state is None  # no append ended at or before row 64
    for lo in range(0, 200, 70):
        s = slice(lo, lo + 70)
        w2.append(acts[s], tok[s], doc[s], pos[s], user_state={"next": min(200, lo + 70)})
    w2.close()
    store = open_store(str(tmp_path))
    np.testing.assert_array_equal(store.read_meta(0, store.n_rows)["token_ids"], tok)
    np.testing.assert_array_equal(store.read(0, 200), acts)
    assert verify_store(store) == []
