"""ActivationLoader: determinism, exact resume, per-process sharding, global arrays, Orbax state."""
import json

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jaxdict.data import ActivationLoader, ArraySource, StoreSource
from jaxdict.store import StoreWriter

D = 4


def _ids_array(n):
    """Row r holds r in column 0, so a batch tells which rows it holds."""
    x = np.zeros((n, D), np.float32)
    x[:, 0] = np.arange(n)
    x[:, 1:] = np.arange(n)[:, None] * 0.5 + np.arange(1, D)
    return x


def _row_ids(batches):
    return [b[:, 0].astype(np.int64) for b in batches]


def _loader(source, **kw):
    args = dict(global_batch_size=24, slab_rows=20, shuffle_buffer_rows=60, seed=0,
                process_index=0, process_count=1)
    args.update(kw)
    return ActivationLoader(source, **args)


def _take(it, n):
    return [np.asarray(next(it)) for _ in range(n)]


def test_same_seed_same_order_different_seed_different_order():
    src = ArraySource(_ids_array(1000))
    a = _row_ids(_take(_loader(src, seed=3).iter_local(), 30))
    b = _row_ids(_take(_loader(src, seed=3).iter_local(), 30))
    c = _row_ids(_take(_loader(src, seed=4).iter_local(), 30))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(np.concatenate(a), np.concatenate(c))


def test_one_epoch_reads_every_row_once_shuffled():
    n = 960  # 48 slabs of 20, 40 batches of 24
    loader = _loader(ArraySource(_ids_array(n)), num_epochs=1)
    assert loader.num_batches == 40
    rows = np.concatenate(_row_ids(list(loader.iter_local())))
    np.testing.assert_array_equal(np.sort(rows), np.arange(n))
    # globally shuffled: slabs come in a non-sequential order; locally shuffled: rows of a
    # slab are not consecutive
    assert not np.array_equal(rows, np.arange(n))
    assert np.mean(np.diff(rows) == 1) < 0.1


def test_epochs_are_reshuffled_and_both_complete():
    n = 400
    loader = _loader(ArraySource(_ids_array(n)), num_epochs=2, global_batch_size=20)
    rows = np.concatenate(_row_ids(list(loader.iter_local())))
    first, second = rows[:n], rows[n:]
    np.testing.assert_array_equal(np.sort(first), np.arange(n))
    np.testing.assert_array_equal(np.sort(second), np.arange(n))
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("n_before", [1, 7, 10, 23])  # mid-window, window edge, across epochs
def test_resume_after_n_batches_equals_uninterrupted(n_before):
    src = ArraySource(_ids_array(500))  # 25 slabs, an epoch is ~20.8 batches
    full = _take(_loader(src, seed=11).iter_local(), n_before + 15)
    it = _loader(src, seed=11).iter_local()
    head = _take(it, n_before)
    state = json.loads(json.dumps(it.get_state()))
    _take(it, 3)  # moving on must not change the saved state's meaning
    resumed = _loader(src, seed=11).iter_local()
    resumed.set_state(state)
    tail = _take(resumed, 15)
    for got, want in zip(head + tail, full):
        np.testing.assert_array_equal(got, want)


def test_resume_in_finite_stream_stops_at_the_same_batch():
    src = ArraySource(_ids_array(300))
    full = list(_loader(src, num_epochs=2).iter_local())
    it = _loader(src, num_epochs=2).iter_local()
    _take(it, 9)
    state = it.get_state()
    resumed = _loader(src, num_epochs=2).iter_local()
    resumed.set_state(state)
    rest = list(resumed)
    assert len(rest) == len(full) - 9
    for got, want in zip(rest, full[9:]):
        np.testing.assert_array_equal(got, want)


def test_close_stops_the_iterator_threads():
    src = ArraySource(_ids_array(500))
    with _loader(src).iter_local() as it:
        next(it)
    with pytest.raises(ValueError, match="iterator was closed"):
        next(it)


def test_state_from_another_configuration_is_refused():
    src = ArraySource(_ids_array(500))
    it = _loader(src, seed=1).iter_local()
    next(it)
    state = it.get_state()
    with pytest.raises(ValueError, match="seed=1 but this loader has seed=2"):
        _loader(src, seed=2).iter_local().set_state(state)
    with pytest.raises(ValueError, match="global_batch_size=24 but this loader has global_batch_size=48"):
        _loader(src, seed=1, global_batch_size=48).iter_local().set_state(state)


@pytest.mark.parametrize("n_slabs,num_epochs", [(30, 1), (31, 2)])
def test_process_shards_are_disjoint_and_cover(n_slabs, num_epochs):
    n, p_count = n_slabs * 20, 3
    src = ArraySource(_ids_array(n))
    per_process = [
        np.concatenate(_row_ids(list(_loader(
            src, global_batch_size=30, num_epochs=num_epochs, process_index=p,
            process_count=p_count).iter_local())))
        for p in range(p_count)
    ]
    assert len({len(r) for r in per_process}) == 1  # equal batch counts
    per_epoch = (n_slabs // p_count) * 20
    for epoch in range(num_epochs):
        parts = [r[epoch * per_epoch:(epoch + 1) * per_epoch] for r in per_process]
        rows = np.concatenate(parts)
        assert len(np.unique(rows)) == len(rows)  # disjoint
        assert len(rows) == (n_slabs // p_count) * p_count * 20
        if n_slabs % p_count == 0:
            np.testing.assert_array_equal(np.sort(rows), np.arange(n))  # covering
        # whole slabs only
        np.testing.assert_array_equal(np.bincount(rows // 20, minlength=n_slabs) % 20, 0)


def test_global_arrays_are_sharded_over_data_axis(devices):
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    src = ArraySource(_ids_array(800))
    loader = ActivationLoader(src, global_batch_size=32, mesh=mesh, slab_rows=20,
                              shuffle_buffer_rows=60, seed=5)
    local = _take(loader.iter_local(), 3)
    it = iter(loader)
    for want in local:
        got = next(it)
        assert got.shape == (32, D) and got.dtype == np.float32
        assert got.sharding == NamedSharding(mesh, PartitionSpec("data", None))
        np.testing.assert_array_equal(np.asarray(got), want)
        for shard in got.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), want[shard.index])


def test_iterator_state_round_trips_through_orbax(tmp_path):
    import orbax.checkpoint as ocp

    src = ArraySource(_ids_array(500))
    it = _loader(src).iter_local()
    _take(it, 5)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(5, args=ocp.args.Composite(data_iter=ocp.args.JsonSave(it.get_state())))
        manager.wait_until_finished()
    want = _take(it, 4)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        restored = manager.restore(5, args=ocp.args.Composite(data_iter=ocp.args.JsonRestore()))
    resumed = _loader(src).iter_local()
    resumed.set_state(restored["data_iter"])
    for got, w in zip(_take(resumed, 4), want):
        np.testing.assert_array_equal(got, w)


def test_store_source_bf16_to_float32_and_resume(tmp_path):
    n = 240  # row ids in column 0 stay exact in bfloat16 (8 significant bits) below 256
    x = _ids_array(n)
    x[:, 1:] = np.random.default_rng(0).normal(size=(n, D - 1))
    with StoreWriter.open(str(tmp_path), d_in=D, dtype="bfloat16", shard_rows=96) as w:
        w.append(x, np.arange(n), np.arange(n) // 16, np.arange(n) % 16)
    src = StoreSource(str(tmp_path))
    assert (src.n_rows, src.d_in) == (n, D)
    loader = _loader(src, num_epochs=1)
    batches = list(loader.iter_local())
    rows = np.concatenate(batches)
    assert rows.dtype == np.float32 and len(rows) == n
    order = np.argsort(rows[:, 0])
    import ml_dtypes
    np.testing.assert_array_equal(rows[order], x.astype(ml_dtypes.bfloat16).astype(np.float32))
    it = _loader(src, num_epochs=1).iter_local()
    _take(it, 3)
    resumed = _loader(src, num_epochs=1).iter_local()
    resumed.set_state(it.get_state())
    for got, want in zip(resumed, batches[3:], strict=True):
        np.testing.assert_array_equal(got, want)


def test_bad_configurations_are_named():
    src = ArraySource(_ids_array(100))
    with pytest.raises(ValueError, match="global_batch_size=25 must be divisible by the process count 2"):
        _loader(src, global_batch_size=25, process_count=2)
    with pytest.raises(ValueError, match="5 slabs of slab_rows=20, fewer than one per process"):
        _loader(src, process_count=6, global_batch_size=24)
    with pytest.raises(ValueError, match=r"process_index must be in \[0, 2\), got 2"):
        _loader(src, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="mesh must have a 'data' axis"):
        _loader(src, mesh=jax.make_mesh((8,), ("batch",)))
    with pytest.raises(ValueError, match="num_epochs must be None .* got 0"):
        _loader(src, num_epochs=0)
    with pytest.raises(ValueError, match="global arrays need process_count"):
        iter(_loader(src, process_count=2, global_batch_size=24))
