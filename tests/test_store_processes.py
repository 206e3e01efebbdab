"""Real processes: a writer killed with SIGKILL mid-shard and resumed; two writers into one store."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np

from jaxdict.store import open_store, verify_store

D = 8
SHARD_ROWS = 40
BATCH = 13
N_BATCHES = 20

# The child produces deterministic rows (row r of writer w: token id r, acts = r + w/10 + column/100)
# in batches of 13 rows and resumes from the writer's resume_state, like the harvester does.
# With `--pause-after K` it prints "paused" after batch K and waits to be killed.
CHILD = textwrap.dedent(f"""
    import sys, time
    import numpy as np
    from jaxdict.store import StoreWriter
    path, w, n, pause_after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    writer = StoreWriter.open(path, d_in={D}, shard_rows={SHARD_ROWS}, writer_index=w, num_writers=n,
                              metadata={{"model": "test"}})
    start = (writer.resume_state or {{"next_batch": 0}})["next_batch"]
    for b in range(start, {N_BATCHES}):
        rows = np.arange(b * {BATCH}, (b + 1) * {BATCH})
        acts = rows[:, None] + w / 10 + np.arange({D})[None, :] / 100
        writer.append(acts.astype(np.float32), rows.astype(np.int32), rows // 5 + 1000 * w,
                      rows % 5, user_state={{"next_batch": b + 1}})
        if b == pause_after:
            print("paused", flush=True)
            time.sleep(600)
    writer.close()
""")


def _child(path, writer_index=0, num_writers=1, pause_after=-1):
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, path, str(writer_index), str(num_writers), str(pause_after)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def _expected(writer_index):
    rows = np.arange(N_BATCHES * BATCH)
    acts = rows[:, None] + writer_index / 10 + np.arange(D)[None, :] / 100
    return rows, acts.astype(np.float32)


def test_sigkill_mid_shard_then_resume_gives_every_row_once(tmp_path):
    path = str(tmp_path / "store")
    for pause_after in (6, 11):  # 91 rows (2 shards + 11 buffered), then 156 (3 shards + 36)
        child = _child(path, pause_after=pause_after)
        assert child.stdout.readline().strip() == "paused"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
        store = open_store(path)
        assert store.n_rows % SHARD_ROWS == 0 and store.n_rows > 0
    child = _child(path)
    assert child.wait(timeout=120) == 0
    store = open_store(path)
    rows, acts = _expected(0)
    assert store.n_rows == len(rows)
    np.testing.assert_array_equal(store.read_meta(0, store.n_rows)["token_ids"], rows)
    np.testing.assert_array_equal(store.read(0, store.n_rows), acts)
    assert store.stats["count"] == len(rows)
    assert verify_store(store) == []


def test_two_writer_processes_share_one_store(tmp_path):
    path = str(tmp_path / "store")
    children = [_child(path, writer_index=w, num_writers=2) for w in (0, 1)]
    assert [c.wait(timeout=120) for c in children] == [0, 0]
    store = open_store(path)
    n = N_BATCHES * BATCH
    assert store.n_rows == 2 * n
    assert sorted({s.writer for s in store.shards}) == [0, 1]
    assert all(s.slot % 2 == s.writer for s in store.shards)
    meta = store.read_meta(0, store.n_rows)
    acts = store.read(0, store.n_rows)
    for w in (0, 1):
        mine = (meta["doc_ids"] >= 1000) == bool(w)
        rows, expected = _expected(w)
        order = np.argsort(meta["token_ids"][mine], kind="stable")
        np.testing.assert_array_equal(meta["token_ids"][mine][order], rows)
        np.testing.assert_array_equal(acts[mine][order], expected)
    assert verify_store(store) == []
