"""Harvester: rows equal a direct forward pass, BOS/padding dropped, resume (in-process and after
SIGKILL of a subprocess) stores every token row exactly once, bad inputs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import jaxdict.lm
from jaxdict.corpus import CorpusError, open_corpus
from jaxdict.harvest import HarvestConfig, harvest, iter_windows
from jaxdict.store import StoreIncompatibleError, open_store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lm():
    return jaxdict.lm.load("gemma3-270m")


def _write_corpus(folder: Path, n_docs: int, seed: int = 0) -> Path:
    """Real text: slices of stdlib source, of varied lengths (some longer than one window)."""
    folder.mkdir(parents=True, exist_ok=True)
    source = (Path(np.__file__).parent / "lib" / "_function_base_impl.py").read_text()
    rng = np.random.default_rng(seed)
    for i in range(n_docs):
        start = int(rng.integers(0, len(source) - 4000))
        (folder / f"doc{i:03d}.txt").write_text(source[start:start + int(rng.integers(5, 900))])
    return folder


def _read_all(path) -> dict[str, np.ndarray]:
    store = open_store(str(path))
    out = store.read_meta(0, store.n_rows)
    out["acts"] = store.read(0, store.n_rows)
    return out


def test_rows_match_direct_forward(lm, tmp_path):
    corpus = open_corpus(str(_write_corpus(tmp_path / "c", 7)))
    config = HarvestConfig(hooks=("resid_post.2", "resid_post.6"), context=48, batch_size=3)
    summary = harvest(lm, corpus, tmp_path / "out", config, progress=False)
    assert summary["batch_size"] == 8  # rounded up to the 8 devices
    windows = list(iter_windows(lm.tokenizer, corpus, 48))
    assert any(w.index > 0 for w in windows)  # some document spans several windows
    expected_tokens = np.concatenate([w.ids[1:] for w in windows])
    for hook in config.hooks:
        got = _read_all(tmp_path / "out" / hook)
        np.testing.assert_array_equal(got["token_ids"], expected_tokens)
        np.testing.assert_array_equal(
            got["doc_ids"], np.concatenate([[w.doc_id] * (len(w.ids) - 1) for w in windows]))
        np.testing.assert_array_equal(
            got["positions"], np.concatenate([np.arange(1, len(w.ids)) for w in windows]))
        ids = np.zeros((len(windows), 48), np.int32)
        mask = np.zeros((len(windows), 48), bool)
        for r, w in enumerate(windows):
            ids[r, :len(w.ids)], mask[r, :len(w.ids)] = w.ids, True
        acts = np.asarray(lm.activations(jnp.asarray(ids), hook, mask=jnp.asarray(mask)))
        direct = np.concatenate([acts[r, 1:len(w.ids)] for r, w in enumerate(windows)])
        scale = float(np.abs(direct).max())
        np.testing.assert_allclose(got["acts"], direct, rtol=1e-4, atol=1e-5 * scale)
    assert summary["total_tokens"] == len(expected_tokens)
    assert 0.0 < summary["padding_frac"] < 1.0


def test_token_budget_then_resume_equals_one_run(lm, tmp_path):
    corpus = open_corpus(str(_write_corpus(tmp_path / "c", 9, seed=1)))
    base = dict(hooks=("resid_post.1",), context=32, batch_size=8, shard_rows=40)
    harvest(lm, corpus, tmp_path / "once", HarvestConfig(**base), progress=False)
    first = harvest(lm, corpus, tmp_path / "twice", HarvestConfig(**base, max_tokens=150),
                    progress=False)
    assert 150 <= first["total_tokens"] < 150 + 8 * 31
    second = harvest(lm, corpus, tmp_path / "twice", HarvestConfig(**base), progress=False)
    assert second["tokens_before"] == first["total_tokens"]
    once, twice = _read_all(tmp_path / "once/resid_post.1"), _read_all(tmp_path / "twice/resid_post.1")
    for key in ("token_ids", "doc_ids", "positions"):
        np.testing.assert_array_equal(twice[key], once[key])
    np.testing.assert_allclose(twice["acts"], once["acts"], rtol=1e-5, atol=1e-4)
    # a finished harvest re-run adds nothing
    third = harvest(lm, corpus, tmp_path / "twice", HarvestConfig(**base), progress=False)
    assert third["tokens"] == 0 and third["total_tokens"] == len(once["token_ids"])


def test_stores_at_different_resume_points_catch_up_exactly(lm, tmp_path):
    """One hook ahead of another (as after a crash between their shard writes): the run restarts
    from the earliest state and feeds each store only the windows it lacks."""
    corpus = open_corpus(str(_write_corpus(tmp_path / "c", 9, seed=3)))
    base = dict(context=32, batch_size=8, shard_rows=40)
    both = ("resid_post.1", "resid_post.2")
    harvest(lm, corpus, tmp_path / "clean", HarvestConfig(hooks=both, **base), progress=False)
    harvest(lm, corpus, tmp_path / "run", HarvestConfig(hooks=both[:1], max_tokens=300, **base),
            progress=False)
    harvest(lm, corpus, tmp_path / "run", HarvestConfig(hooks=both, max_tokens=200, **base),
            progress=False)  # the second store starts; the first is fed nothing yet
    harvest(lm, corpus, tmp_path / "run", HarvestConfig(hooks=both, **base), progress=False)
    for hook in both:
        got, want = _read_all(tmp_path / "run" / hook), _read_all(tmp_path / "clean" / hook)
        for key in ("token_ids", "doc_ids", "positions"):
            np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.slow
def test_sigkill_mid_harvest_then_resume_every_row_once(lm, tmp_path):
    corpus_dir = _write_corpus(tmp_path / "c", 60, seed=2)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "jaxdict.cli", "harvest", "--hook", "resid_post.4",
           "--hook", "resid_post.1", "--corpus", str(corpus_dir), "--context", "32",
           "--batch-size", "8", "--shard-rows", "48", "--no-progress", "--out", str(out)]
    # The child compiles with this process's XLA flags (conftest's): the resumed rows are compared
    # with a harvest run here, and another LLVM optimisation level rounds differently.
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if open_store(str(out / "resid_post.4")).n_rows >= 96:
                break
        except Exception:  # the store does not exist yet
            pass
        time.sleep(0.02)
    assert proc.poll() is None, "harvest finished before it could be killed; enlarge the corpus"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = open_store(str(out / "resid_post.4")).n_rows
    resumed = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    corpus = open_corpus(str(corpus_dir))
    harvest(lm, corpus, tmp_path / "clean", HarvestConfig(
        hooks=("resid_post.4", "resid_post.1"), context=32, batch_size=8, shard_rows=48),
        progress=False)
    for hook in ("resid_post.4", "resid_post.1"):
        got, want = _read_all(out / hook), _read_all(tmp_path / "clean" / hook)
        assert 0 < partial < len(want["token_ids"])
        for key in ("token_ids", "doc_ids", "positions"):
            np.testing.assert_array_equal(got[key], want[key])
        np.testing.assert_allclose(got["acts"], want["acts"], rtol=1e-5, atol=1e-4)


def test_bad_inputs(lm, tmp_path):
    with pytest.raises(CorpusError, match="has no documents"):
        (tmp_path / "empty").mkdir()
        harvest(lm, open_corpus(str(tmp_path / "empty")), tmp_path / "o",
                HarvestConfig(hooks=("resid_post.1",)), progress=False)
    with pytest.raises(ValueError, match=r"valid layers are 0\.\.17"):
        harvest(lm, open_corpus("default"), tmp_path / "o",
                HarvestConfig(hooks=("resid_post.18",)), progress=False)
    with pytest.raises(ValueError, match="context must be an int >= 2"):
        HarvestConfig(hooks=("resid_post.1",), context=1)
    with pytest.raises(ValueError, match="duplicates"):
        HarvestConfig(hooks=("resid_post.1", "resid_post.1"))
    corpus = open_corpus(str(_write_corpus(tmp_path / "c", 2)))
    harvest(lm, corpus, tmp_path / "s", HarvestConfig(hooks=("resid_post.0",), context=32),
            progress=False)
    with pytest.raises(StoreIncompatibleError, match="metadata"):  # resuming with another context
        harvest(lm, corpus, tmp_path / "s", HarvestConfig(hooks=("resid_post.0",), context=64),
                progress=False)


def test_cli_reports_bad_hook(tmp_path):
    from jaxdict.cli import main

    assert main(["harvest", "--corpus", str(tmp_path), "--hook", "resid_post.99", "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 1
