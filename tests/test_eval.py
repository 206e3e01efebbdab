"""Evaluator: whole-set metrics, held-out windows, the SAE spliced into the real Gemma 3 270M, CLI.

`gemma()` loads the model once per test session (other eval tests import it), and `gemma_store`
builds a small activation store from real Gemma activations in the harvester's layout.
"""
from __future__ import annotations

import functools
import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdict.evaluate import heldout
from jaxdict.evaluate.metrics import ActivationMetrics
from jaxdict.evaluate.spliced import compare_edits, sae_splice_metrics
from jaxdict.sae.config import SAEConfig
from jaxdict.sae.inference import SAE
from jaxdict.sae.params import init_params

import jax

HOOK = "resid_post.3"
CONTEXT = 25  # BOS + 24 tokens per window


@functools.lru_cache(maxsize=None)
def gemma():
    import jaxdict.lm

    return jaxdict.lm.load("gemma3-270m")


def corpus_windows(n_docs: int, context: int = CONTEXT) -> list[list[int]]:
    """One [BOS, ...] window per document of the default corpus (Python stdlib source)."""
    from jaxdict.corpus import open_corpus

    lm = gemma()
    out = []
    for doc in open_corpus("default").documents():
        ids = lm.tokenizer.encode(doc.text, add_bos=False)[: context - 1]
        if len(ids) >= 8:
            out.append([lm.tokenizer.bos_id, *ids])
        if len(out) == n_docs:
            return out
    raise AssertionError("default corpus too small")


def build_store(path, windows, hook=HOOK, model="gemma3-270m", doc_ids=None):
    """Real activations of `windows` at `hook`, written as the harvester writes them."""
    from jaxdict.evaluate.spliced import pad_windows
    from jaxdict.store import StoreWriter

    lm = gemma()
    ids, mask = pad_windows(windows, lm.tokenizer.pad_id)
    acts = np.asarray(lm.activations(jnp.asarray(ids), hook, jnp.asarray(mask)))
    doc_ids = list(range(len(windows))) if doc_ids is None else doc_ids
    w = StoreWriter.open(str(path), d_in=acts.shape[-1], metadata={"model": model, "hook": hook,
                                                                   "context_length": CONTEXT}, shard_rows=64)
    for i, win in enumerate(windows):
        n = len(win)
        w.append(acts[i, 1:n], np.asarray(win[1:], np.int32), np.full(n - 1, doc_ids[i], np.int64),
                 np.arange(1, n, dtype=np.int32))
    w.close()
    return path


@pytest.fixture(scope="module")
def gemma_store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("store") / HOOK, corpus_windows(12))


def test_heldout_hash_matches_data_split():
    from jaxdict.data.split import split_mask

    doc_ids = np.arange(-50, 5000, 7, dtype=np.int64)
    for split in ("train", "eval", "all"):
        np.testing.assert_array_equal(heldout.in_split(doc_ids, split, 0.3), split_mask(doc_ids, split, 0.3))
    with pytest.raises(ValueError, match="split must be one of"):
        heldout.in_split(doc_ids, "test", 0.1)


def test_windows_rebuilt_from_rows():
    token_ids = np.array([5, 6, 7, 8, 9, 10, 11, 12], np.int32)
    doc_ids = np.array([3, 3, 3, 3, 4, 4, 4, 4], np.int64)
    positions = np.array([2, 3, 1, 2, 1, 2, 3, 1], np.int32)  # first window cut: dropped
    w = heldout.windows_from_rows(token_ids, doc_ids, positions, bos_id=2)
    assert w == [[2, 7, 8], [2, 9, 10, 11], [2, 12]]
    assert heldout.windows_from_rows(token_ids, doc_ids, positions, 2, max_tokens=5) == [[2, 7, 8], [2, 9, 10, 11]]


def _random_sae(d=24, F=48, arch="relu_l1", seed=0) -> SAE:
    cfg = SAEConfig(arch=arch, d_in=d, n_features=F, k=6)
    p = init_params(cfg, jax.random.PRNGKey(seed))
    p = p.replace(b_enc=jnp.full((F,), 0.05, jnp.float32), W_enc=p.W_enc * jnp.float32(1.3))
    return SAE(cfg=cfg, params=p)


@pytest.mark.parametrize("arch", ["relu_l1", "topk"])
def test_activation_metrics_whole_set_and_batch_size_independent(arch):
    sae = _random_sae(arch=arch)
    rng = np.random.default_rng(0)
    # A large common offset: fvu must use the whole-set mean without cancellation.
    x = (rng.normal(size=(1000, 24)) * 0.5 + 40.0).astype(np.float32)
    results = []
    for bs in (1000, 64, 7):
        acc = ActivationMetrics(sae)
        for i in range(0, 1000, bs):
            acc.update(x[i:i + bs])
        results.append(acc.result())
    f = np.asarray(sae.encode(x))
    x_hat = np.asarray(sae.decode(f), np.float64)
    want_fvu = np.sum((x - x_hat) ** 2) / np.sum((x - x.mean(0)) ** 2)
    density = np.mean(f > 0, axis=0)
    for r in results:
        assert r["fvu"] == pytest.approx(want_fvu, rel=1e-4)
        assert r["explained_variance"] == pytest.approx(1 - want_fvu, rel=1e-4, abs=1e-6)
        assert r["l0"] == pytest.approx(np.mean(np.sum(f > 0, -1)), rel=1e-6)
        assert r["dead_frac"] == pytest.approx(np.mean(density == 0))
        assert r["dense_frac"] == pytest.approx(np.mean(density > 0.1))
        assert r["n_tokens"] == 1000
    assert 0 < results[0]["dense_frac"] < 1 or 0 < results[0]["dead_frac"] < 1


def _identity(x, args):
    return x


@pytest.mark.slow
def test_identity_splice_gives_zero_delta_ce_and_kl():
    lm = gemma()
    windows = corpus_windows(3)
    r = compare_edits(lm, HOOK, windows, {"identity": (_identity, lambda where: ()),
                                          "zero": (lambda x, w: jnp.where(w[..., None], 0.0, x).astype(x.dtype),
                                                   lambda where: where)}, batch_size=2)
    assert r["identity"]["ce"] - r["ce_clean"] == 0.0
    assert r["identity"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert 1.0 < r["ce_clean"] < 8.0  # real text under a real LM
    assert r["zero"]["ce"] > r["ce_clean"] + 1.0 and r["zero"]["kl"] > 0.5
    assert r["n_loss_tokens"] == sum(len(w) - 2 for w in windows)


@pytest.mark.slow
def test_sae_splice_metrics_are_consistent():
    lm = gemma()
    cfg = SAEConfig(arch="relu_l1", d_in=640, n_features=256)
    sae = SAE(cfg=cfg, params=init_params(cfg, jax.random.PRNGKey(0)), model="gemma3-270m", hook=HOOK)
    r = sae_splice_metrics(lm, sae, corpus_windows(2))
    assert r["delta_ce"] == pytest.approx(r["ce_sae"] - r["ce_clean"])
    assert r["ce_recovered"] == pytest.approx(
        (r["ce_zero_ablation"] - r["ce_sae"]) / (r["ce_zero_ablation"] - r["ce_clean"]))
    assert r["kl"] > 0 and r["delta_ce"] > 0  # an untrained SAE hurts
    other = SAE(cfg=cfg, params=sae.params, model="llama-7b", hook=HOOK)
    with pytest.raises(ValueError, match="trained on model 'llama-7b'"):
        sae_splice_metrics(lm, other, corpus_windows(1))


@pytest.fixture(scope="module")
def gemma_run(tmp_path_factory, gemma_store):
    from jaxdict.store import open_store
    from test_sae_io import train_params, write_run

    store = open_store(str(gemma_store))
    x = store.read(0, store.n_rows).astype(np.float32)
    cfg = SAEConfig(arch="topk", d_in=640, n_features=128, k=8)
    params, scale = train_params(cfg, x, steps=40)
    return write_run(tmp_path_factory.mktemp("run") / "run", cfg, params, scale, hook=HOOK,
                     store=str(gemma_store))


@pytest.mark.slow
def test_eval_cli_end_to_end(tmp_path, gemma_run, gemma_store, monkeypatch, capsys):
    import jaxdict.lm
    from jaxdict.cli import main

    monkeypatch.setattr(jaxdict.lm, "load", lambda name: gemma())
    out = tmp_path / "eval"
    rc = main(["eval", str(gemma_run), "--out", str(out), "--eval-fraction", "0.5", "--text-tokens", "60",
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    r = json.loads((out / "eval.json").read_text())
    for key in ("fvu", "explained_variance", "l0", "dead_frac", "dense_frac", "delta_ce", "ce_recovered", "kl"):
        assert np.isfinite(r[key]), key
    assert 0 < r["fvu"] < 1 and 0 < r["l0"] <= 8
    assert r["n_tokens"] < 12 * 24 and r["n_text_tokens"] <= 60  # held-out rows only
    assert (out / "density.png").read_bytes()[:4] == b"\x89PNG"
    assert "delta_ce" in (out / "eval.txt").read_text()
    assert "ce_recovered" in capsys.readouterr().out


def test_eval_cli_refuses_store_of_another_hook(tmp_path, gemma_run, capsys):
    from jaxdict.cli import main

    other = build_store(tmp_path / "resid_post.1", corpus_windows(2), hook="resid_post.1")
    rc = main(["eval", str(gemma_run), "--store", str(other), "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "trained on hook 'resid_post.3'" in err and "'resid_post.1'" in err
    rc = main(["eval", str(gemma_run), "--step", "99", "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 1 and "step 99 was never saved" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_cli_on_corpus_text_without_store(tmp_path, gemma_run, monkeypatch, capsys):
    import sysconfig
    from pathlib import Path

    import jaxdict.lm
    from jaxdict.cli import main

    monkeypatch.setattr(jaxdict.lm, "load", lambda name: gemma())
    text = Path(sysconfig.get_paths()["stdlib"]) / "json" / "__init__.py"
    out = tmp_path / "eval"
    rc = main(["eval", str(gemma_run), "--store", str(tmp_path / "missing"), "--corpus", str(text),
               "--tokens", "90", "--text-tokens", "40", "--context", "33", "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    r = json.loads((out / "eval.json").read_text())
    assert r["n_tokens"] == 90 and r["n_text_tokens"] == 40
    assert r["activations_source"].startswith("LM activations of corpus")
    assert 0 < r["fvu"] < 2 and np.isfinite(r["kl"]) and r["ce_zero_ablation"] > r["ce_clean"]
