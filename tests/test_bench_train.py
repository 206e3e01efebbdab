"""The whole-run benchmark against SAELens: one scoring function for both sides, and the command
end to end on a tiny store (skipped where sae-lens is not installed)."""
from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdict.bench.train_vs_saelens import score_topk
from jaxdict.sae.config import SAEConfig
from jaxdict.sae.forward import dense_latents, forward
from jaxdict.sae.params import init_params


def test_score_topk_matches_the_forward_pass_and_the_metric_definitions():
    cfg = SAEConfig(arch="topk", d_in=16, n_features=64, k=4, decode="dense")
    params = init_params(cfg, jax.random.PRNGKey(0))
    params = params.replace(b_enc=params.b_enc.at[:8].set(-100.0), b_dec=jnp.full((16,), 0.3))  # 8 never fire
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (96, 16))) * 2.0 + 1.0
    got = score_topk(params, cfg.k, [x[:40], x[40:]])  # batches of unequal size: sums, not means of means
    out = forward(params, jnp.asarray(x), cfg)
    f = np.asarray(dense_latents(out, cfg.n_features))
    want_fvu = np.sum(np.square(x - np.asarray(out.x_hat))) / np.sum(np.square(x - x.mean(0)))
    assert got["fvu"] == pytest.approx(want_fvu, rel=1e-4)
    assert got["l0"] == pytest.approx(np.mean(np.sum(f > 0, axis=1)))
    assert got["dead_frac"] == pytest.approx(np.mean(~np.any(f > 0, axis=0)))
    assert got["dead_frac"] >= 8 / 64 and got["eval_rows"] == 96


def test_bench_train_against_saelens_on_a_tiny_store(tmp_path):
    pytest.importorskip("sae_lens")
    from jaxdict.store import StoreWriter
    from jaxdict.testing import planted_dictionary

    planted = planted_dictionary(d_in=16, n_planted=32, seed=0)
    rows, _ = planted.sample(8192, seed=1)
    rows = (rows * 30.0 + 5.0).astype(np.float32)
    writer = StoreWriter.open(str(tmp_path / "store"), d_in=16, dtype="float32", metadata={"model": "m", "hook": "h"})
    n = rows.shape[0]
    writer.append(rows, np.zeros(n, np.int32), np.arange(n, dtype=np.int32) // 64, np.arange(n, dtype=np.int32) % 64)
    writer.close()
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "jaxdict.cli", "bench", "train", "--saelens", "--store", str(tmp_path / "store"),
         "--d-in", "16", "--features", "64", "--k", "4", "--batch-size", "64", "--steps", "60", "--lr", "3e-3",
         "--dead-steps", "10", "--eval-rows", "1024", "--out", str(tmp_path / "runs"), "--json", str(out)],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for side in ("jaxdict", "saelens"):
        r = result[side]
        assert r["eval_rows"] > 0 and 0 < r["fvu"] < 1 and 0 < r["l0"] <= 4 and 0 <= r["dead_frac"] <= 1
        assert r["tokens_per_s"] == pytest.approx(60 * 64 / r["wall_s"])
    assert "jaxdict / SAELens end to end" in proc.stdout
