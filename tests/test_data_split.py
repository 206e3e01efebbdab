"""Held-out split by document, for numpy and store sources."""
import numpy as np
import pytest

from jaxdict.data import ArraySource, StoreSource, split_mask
from jaxdict.store import StoreWriter


def _docs(n_docs=400, seed=0):
    lengths = np.random.default_rng(seed).integers(1, 30, size=n_docs)
    return np.repeat(np.arange(n_docs, dtype=np.int64) * 7919, lengths)


def test_split_is_by_document_disjoint_and_covering():
    doc_ids = _docs()
    train = split_mask(doc_ids, "train", 0.1)
    evals = split_mask(doc_ids, "eval", 0.1)
    assert not (train & evals).any() and (train | evals).all()
    for d in np.unique(doc_ids):  # a document is wholly in one split
        assert len(set(evals[doc_ids == d])) == 1
    frac = len(np.unique(doc_ids[evals])) / len(np.unique(doc_ids))
    assert 0.05 < frac < 0.15
    # depends only on the id, not on position or neighbours
    np.testing.assert_array_equal(split_mask(doc_ids[::-1], "eval", 0.1), evals[::-1])


def test_array_and_store_sources_agree(tmp_path):
    doc_ids = _docs()
    n = len(doc_ids)
    x = np.random.default_rng(1).normal(size=(n, 6)).astype(np.float32)
    with StoreWriter.open(str(tmp_path), d_in=6, shard_rows=128) as w:
        w.append(x, np.arange(n), doc_ids, np.zeros(n, np.int32))
    evals = split_mask(doc_ids, "eval", 0.2)
    for split, mask in [("eval", evals), ("train", ~evals), ("all", np.ones(n, bool))]:
        a = ArraySource(x, doc_ids=doc_ids, split=split, eval_fraction=0.2)
        s = StoreSource(str(tmp_path), split=split, eval_fraction=0.2)
        assert a.n_rows == s.n_rows == mask.sum()
        np.testing.assert_array_equal(a.read(0, a.n_rows), x[mask])
        np.testing.assert_array_equal(s.read(0, s.n_rows), x[mask])
        np.testing.assert_array_equal(s.read(17, 233), x[mask][17:233])


def test_bad_split_arguments():
    x = np.zeros((10, 3), np.float32)
    with pytest.raises(ValueError, match="split must be one of .* got 'test'"):
        ArraySource(x, split="test")
    with pytest.raises(ValueError, match=r"eval_fraction must be in \[0, 1\], got 1.5"):
        ArraySource(x, split="eval", eval_fraction=1.5)
    with pytest.raises(ValueError, match=r"doc_ids must be an integer array of shape \(10,\)"):
        ArraySource(x, doc_ids=np.zeros(9, np.int64))
