"""2L row-aligned stores served as one CLT row: alignment refused as PairedSource refuses it, and
the loader's shuffle, resume and per-process shares hold for the joined rows."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jaxdict.clt.config import CLTConfig
from jaxdict.clt.step import split_rows
from jaxdict.data import ActivationLoader
from jaxdict.data.multi import MultiStoreSource, clt_store_paths
from jaxdict.store import StoreWriter
from jaxdict.store.errors import StoreIncompatibleError
from jaxdict.train.mesh import make_mesh

N, L, D = 1024, 2, 4
META = {"model": "gemma3-270m", "corpus": {"format": "text", "spec": "default"}, "context_length": 64}


def _write(path, acts, hook, metadata=None, token_ids=None):
    ids = np.arange(len(acts))
    tokens = (ids * 7 % 1000).astype(np.int32) if token_ids is None else token_ids
    with StoreWriter.open(str(path), d_in=acts.shape[1], dtype="float32", shard_rows=256,
                          metadata={**(metadata or META), "hook": hook}) as w:
        w.append(acts, tokens, (ids // 64).astype(np.int64), (ids % 64).astype(np.int32))
    return str(path)


@pytest.fixture
def clt_root(tmp_path):
    """Store (hook h, layer l) holds row id · 100 + 10·h + l in every column: any mixing shows."""
    ids = np.arange(N, dtype=np.float32)[:, None]
    for h, hook in enumerate(("resid_mid", "mlp_out")):
        for layer in range(L):
            _write(tmp_path / f"{hook}.{layer}", np.repeat(ids * 100 + 10 * h + layer, D, axis=1), f"{hook}.{layer}")
    return tmp_path


def _check_rows(rows):
    x, y = split_rows(rows, CLTConfig(n_layers=L, d_model=D, n_features=8))
    ids = np.asarray(x)[:, 0, 0] // 100
    for h, part in enumerate((np.asarray(x), np.asarray(y))):
        for layer in range(L):
            np.testing.assert_array_equal(part[:, layer], np.repeat(ids[:, None] * 100 + 10 * h + layer, D, axis=1))
    return ids.astype(int)


def test_rows_join_all_layers_of_one_token(clt_root):
    for split in ("all", "train", "eval"):
        src = MultiStoreSource(clt_store_paths(clt_root, L), split=split, eval_fraction=0.2)
        assert src.widths == (D,) * 2 * L and src.d_in == 2 * L * D
        _check_rows(src.read(0, src.n_rows))


def test_loader_shuffles_resumes_and_splits_processes(clt_root, devices):
    src = MultiStoreSource(clt_store_paths(clt_root, L), split="train", eval_fraction=0.2)

    def loader():
        return ActivationLoader(src, global_batch_size=32, mesh=make_mesh(2, 4), seed=3, slab_rows=64,
                                shuffle_buffer_rows=256)

    it = iter(loader())
    ids = np.concatenate([_check_rows(np.asarray(next(it))) for _ in range(4)])
    assert not np.array_equal(ids, np.sort(ids))
    state = json.loads(json.dumps(it.get_state()))
    want = [np.asarray(next(it)) for _ in range(2)]
    resumed = iter(loader())
    resumed.set_state(state)
    for w in want:
        np.testing.assert_array_equal(np.asarray(next(resumed)), w)
    halves = [ActivationLoader(src, 32, seed=3, slab_rows=64, shuffle_buffer_rows=256, process_index=p,
                               process_count=2).iter_local() for p in range(2)]
    a, b = (_check_rows(next(h)) for h in halves)
    assert len(a) == len(b) == 16 and not set(a) & set(b)


def test_misaligned_or_missing_stores_are_refused(clt_root, tmp_path):
    paths = clt_store_paths(clt_root, L)
    short = _write(tmp_path / "short", np.zeros((N // 2, D), np.float32), "mlp_out.1")
    with pytest.raises(StoreIncompatibleError, match=r"has 1024 rows, .*short has 512"):
        MultiStoreSource(paths[:-1] + [short])
    tokens = (np.arange(N) * 7 % 1000).astype(np.int32)
    tokens[700] += 1
    shifted = _write(tmp_path / "shifted", np.zeros((N, D), np.float32), "mlp_out.1", token_ids=tokens)
    with pytest.raises(StoreIncompatibleError, match=r"row 700 has token_ids"):
        MultiStoreSource(paths[:-1] + [shifted])
    with pytest.raises(FileNotFoundError, match=r"resid_mid\.2, resid_mid\.3, mlp_out\.2, mlp_out\.3"):
        clt_store_paths(clt_root, 4)
