"""Paired (input, target) rows from two row-aligned stores: the loader's shuffle, resume and
per-process shares hold for pairs, and stores that are not aligned are refused naming the row."""
from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

from jaxdict.data import ActivationLoader
from jaxdict.data.paired import PairedSource, check_aligned, split_pair
from jaxdict.store import StoreWriter, open_store
from jaxdict.store.errors import StoreIncompatibleError
from jaxdict.train.mesh import make_mesh

N, D_X, D_Y = 2048, 6, 4
META = {"model": "gemma3-270m", "corpus": {"format": "text", "spec": "default"}, "context_length": 64}


def _rows():
    """Inputs whose first column is the row id, and targets that are a known function of them,
    so every served pair can be checked after shuffling."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D_X)).astype(np.float32)
    x[:, 0] = np.arange(N)
    y = np.stack([x[:, 0], 2 * x[:, 1], x[:, 2] - x[:, 3], x[:, 4] * x[:, 5]], axis=1)
    return x, y.astype(np.float32)


def _meta_columns(n=N):
    ids = np.arange(n)
    return (ids * 7 % 1000).astype(np.int32), (ids // 64).astype(np.int64), (ids % 64).astype(np.int32)


def _write(path, acts, hook, dtype="float32", metadata=None, token_ids=None):
    tokens, docs, positions = _meta_columns(len(acts))
    if token_ids is not None:
        tokens = token_ids
    with StoreWriter.open(str(path), d_in=acts.shape[1], dtype=dtype, shard_rows=512,
                          metadata={**(metadata or META), "hook": hook}) as w:
        w.append(acts, tokens, docs, positions)
    return str(path)


@pytest.fixture
def stores(tmp_path):
    x, y = _rows()
    return _write(tmp_path / "mlp_in.9", x, "mlp_in.9"), _write(tmp_path / "mlp_out.9", y, "mlp_out.9"), x, y


def test_pairs_come_from_the_same_token_in_every_split(stores):
    x_path, y_path, x, y = stores
    for split in ("all", "train", "eval"):
        src = PairedSource(x_path, y_path, split=split, eval_fraction=0.2)
        assert (src.d_input, src.d_target, src.d_in) == (D_X, D_Y, D_X + D_Y)
        rows = src.read(0, src.n_rows)
        got_x, got_y = split_pair(rows, D_X)
        ids = got_x[:, 0].astype(int)
        np.testing.assert_array_equal(got_x, x[ids])
        np.testing.assert_array_equal(got_y, y[ids])
    train, held = PairedSource(x_path, y_path, "train", 0.2), PairedSource(x_path, y_path, "eval", 0.2)
    assert train.n_rows + held.n_rows == N and 0 < held.n_rows < N


def test_bf16_target_store_is_served_as_float32_pairs(tmp_path):
    x, y = _rows()
    x_path = _write(tmp_path / "a", x, "mlp_in.9")
    y_path = _write(tmp_path / "b", y.astype(ml_dtypes.bfloat16), "mlp_out.9", dtype="bfloat16")
    rows = PairedSource(x_path, y_path).read(0, 100)
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows[:, D_X:], y[:100].astype(ml_dtypes.bfloat16).astype(np.float32))


def test_loader_shuffles_shards_and_resumes_pairs_intact(stores, devices):
    x_path, y_path, x, y = stores
    src = PairedSource(x_path, y_path, split="train", eval_fraction=0.2)
    mesh = make_mesh(2, 4)

    def loader():
        return ActivationLoader(src, global_batch_size=64, mesh=mesh, seed=3, slab_rows=128, shuffle_buffer_rows=512)

    it = iter(loader())
    seen = []
    for _ in range(5):
        batch = next(it)
        assert batch.shape == (64, D_X + D_Y) and batch.sharding.spec[0] == "data"
        bx, by = split_pair(np.asarray(batch), D_X)
        ids = bx[:, 0].astype(int)
        np.testing.assert_array_equal(by, y[ids])  # each target row stayed with its input row
        seen.append(ids)
    assert not np.array_equal(np.concatenate(seen), np.sort(np.concatenate(seen)))  # shuffled
    state = json.loads(json.dumps(it.get_state()))
    want = [np.asarray(next(it)) for _ in range(3)]
    resumed = iter(loader())
    resumed.set_state(state)
    for w in want:
        np.testing.assert_array_equal(np.asarray(next(resumed)), w)
    # two simulated processes read disjoint halves of each global batch's rows
    halves = [ActivationLoader(src, 64, seed=3, slab_rows=128, shuffle_buffer_rows=512, process_index=p,
                               process_count=2).iter_local() for p in range(2)]
    a, b = (next(h)[:, 0].astype(int) for h in halves)
    assert len(a) == len(b) == 32 and not set(a) & set(b)


def test_stores_that_are_not_row_aligned_are_refused(tmp_path, stores):
    x_path, y_path, x, y = stores
    short = _write(tmp_path / "short", y[:1000], "mlp_out.9")
    with pytest.raises(StoreIncompatibleError, match=r"has 2048 rows, .*short has 1000"):
        PairedSource(x_path, short)
    other_model = _write(tmp_path / "other", y, "mlp_out.9", metadata={**META, "model": "gemma3-1b"})
    with pytest.raises(StoreIncompatibleError, match="model is 'gemma3-270m' in .* but 'gemma3-1b'"):
        PairedSource(x_path, other_model)
    tokens, _, _ = _meta_columns()
    tokens = tokens.copy()
    tokens[1500:1510] += 1  # another harvest: the same shapes, other tokens from row 1500 on
    shifted = _write(tmp_path / "shifted", y, "mlp_out.9", token_ids=tokens)
    with pytest.raises(StoreIncompatibleError, match=r"row 1500 has token_ids .* \(10 of rows 0\.\.2048 differ\)"):
        check_aligned(open_store(x_path), open_store(shifted))
