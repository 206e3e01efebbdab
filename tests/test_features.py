"""Feature explorer: the one-pass scan against brute force, contexts, logit effects, neighbours,
and `jaxdict features` end to end on real Gemma 3 270M activations."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdict.evaluate.explorer import (
    context_ranges,
    decoder_neighbours,
    logit_effects,
    quantile_examples,
    scan_features,
    search_text,
)
from jaxdict.sae.config import SAEConfig
from jaxdict.sae.inference import SAE
from jaxdict.sae.params import init_params
from test_eval import HOOK, corpus_windows, gemma, gemma_run, gemma_store  # noqa: F401 (fixtures)


def _sae(arch="relu_l1", d=20, F=40) -> SAE:
    cfg = SAEConfig(arch=arch, d_in=d, n_features=F, k=5)
    p = init_params(cfg, jax.random.PRNGKey(1))
    # b_enc -0.3 makes firing sparse; latents 0..3 at -100 never fire (dead pages are tested).
    b_enc = jnp.full((F,), -0.3, jnp.float32).at[:4].set(-100.0)
    return SAE(cfg=cfg, params=p.replace(b_enc=b_enc))


@pytest.mark.parametrize("arch", ["relu_l1", "topk"])
def test_scan_matches_brute_force(arch):
    sae = _sae(arch)
    x = np.random.default_rng(0).normal(size=(700, 20)).astype(np.float32)
    for bs in (700, 128):
        # Brute force encodes the same batches as the scan: XLA:CPU tiles a matmul by its row
        # count, so 128 rows and 700 rows round differently, and with b_enc = -0.3 cancelling
        # most of x·W_enc a last-bit difference is ~3e-6 relative on small activations.
        f = np.concatenate([np.asarray(sae.encode(x[i:i + bs])) for i in range(0, 700, bs)])
        scan = scan_features(sae, (x[i:i + bs] for i in range(0, 700, bs)), n_top=5, n_samples=8)
        np.testing.assert_allclose(scan.max_act, f.max(0), rtol=1e-6)
        np.testing.assert_array_equal(scan.fire_count, (f > 0).sum(0))
        np.testing.assert_allclose(scan.mean_active, np.where((f > 0).sum(0) > 0, f.sum(0) / np.maximum((f > 0).sum(0), 1), 0),
                                   rtol=1e-4)
        for i in range(sae.n_features):
            n_active = int((f[:, i] > 0).sum())
            want = np.sort(f[:, i])[::-1][:min(5, n_active)]
            got = scan.top_values[i][scan.top_rows[i] >= 0]
            np.testing.assert_allclose(got, want, rtol=1e-6)
            np.testing.assert_allclose(f[scan.top_rows[i][scan.top_rows[i] >= 0], i], got, rtol=1e-6)
            rows = scan.sample_rows[i][scan.sample_rows[i] >= 0]
            assert len(rows) == min(8, n_active) and len(set(rows)) == len(rows)
            assert np.all(f[rows, i] > 0)
            np.testing.assert_allclose(scan.sample_values[i][scan.sample_rows[i] >= 0], f[rows, i], rtol=1e-6)
    # A latent that never fired has no contexts and no maximum (its page would show noise).
    dead = scan.fire_count == 0
    assert dead[:4].all() and not dead.all()  # b_enc = -100 silences latents 0..3
    assert np.all(scan.top_rows[dead] < 0) and np.all(scan.sample_rows[dead] < 0)
    assert np.all(scan.max_act[dead] == 0) and np.all(scan.mean_active[dead] == 0)


def test_quantiles_and_context_ranges():
    groups = quantile_examples(np.array([5.0, 1.0, 3.0, 2.0, 4.0, 0.0]), np.array([10, 11, 12, 13, 14, -1]), n_bins=2,
                               per_bin=2)
    # Sorted: 1(11) 2(13) 3(12) | 4(14) 5(10); highest quantile first, ends of each bin picked.
    assert [r for r, _ in groups[0][1]] == [14, 10] and groups[0][0].startswith("quantile 50-100")
    assert [r for r, _ in groups[1][1]] == [11, 12] and groups[1][0].startswith("quantile 0-50")
    doc = np.array([1, 1, 1, 1, 2, 2, 2])
    pos = np.array([1, 2, 3, 4, 1, 2, 3])
    assert context_ranges(np.array([1, 4, 6]), doc, pos, before=2, after=1) == [(0, 3), (4, 6), (4, 7)]


def test_logit_effects_and_neighbours():
    lm = gemma()
    cfg = SAEConfig(arch="relu_l1", d_in=640, n_features=64)
    sae = SAE(cfg=cfg, params=init_params(cfg, jax.random.PRNGKey(3)))
    # Plant a decoder row equal to the (norm-undone) embedding of " the": it must promote " the".
    the = lm.tokenizer.encode(" the", add_bos=False)[0]
    g = np.asarray(lm.params["final_norm"], np.float32)
    row = np.asarray(lm.unembed_matrix[the], np.float32) / g
    W = np.asarray(sae.params.W_dec).copy()
    W[5] = row / np.linalg.norm(row)
    W[9] = W[5] * 0.9 + W[9] * 0.1
    sae = SAE(cfg=cfg, params=sae.params.replace(W_dec=jnp.asarray(W)))
    ti, tv, bi, bv = logit_effects(sae, lm, [5, 7], n=4)
    assert ti[0, 0] == the
    want = (W[7] * g) @ np.asarray(lm.unembed_matrix, np.float32).T
    np.testing.assert_allclose(tv[1], np.sort(want)[::-1][:4], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(bv[1], np.sort(want)[:4], rtol=1e-3, atol=1e-3)
    nb, cos = decoder_neighbours(sae, [5], n=3)
    assert nb[0, 0] == 9 and cos[0, 0] > 0.9 and 5 not in nb[0]


def test_features_cli_end_to_end(tmp_path, gemma_run, monkeypatch, capsys):
    import jaxdict.lm
    from jaxdict.cli import main
    from jaxdict.sae.io import load_sae

    monkeypatch.setattr(jaxdict.lm, "load", lambda name: gemma())
    out = tmp_path / "feat"
    text = "def main():\n    return 0"
    rc = main(["features", str(gemma_run), "--out", str(out), "--pages", "5", "--n-top", "4",
               "--search", text, "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    max_act = np.load(out / "max_activations.npy")
    sae = load_sae(gemma_run)
    assert max_act.shape == (sae.n_features,) and max_act.max() > 0
    doc = json.loads((out / "features.json").read_text())
    assert len(doc["features"]) == 5
    page = doc["features"][0]
    top = page["top"][0]
    # The highlighted token of the top context carries the feature's top activation.
    assert top["acts"][top["highlight"]] == pytest.approx(top["value"], rel=1e-4)
    assert top["value"] == pytest.approx(page["max_act"], rel=1e-5)
    assert (out / "index.html").is_file() and (out / "features" / f"feature_{page['feature']:06d}.html").is_file()
    search = json.loads((out / "search.json").read_text())[0]
    assert search["features"] and len(search["features"][0]["per_token"]) == len(gemma().tokenizer.encode(text)) - 1
    # The search agrees with encoding the text's activations directly.
    ids = gemma().tokenizer.encode(text)
    f = np.asarray(sae.encode(gemma().activations(jnp.asarray([ids]), HOOK)[0, 1:]))
    assert search["features"][0]["feature"] == int(np.argmax(f.max(0)))

    rc = main(["features", str(gemma_run), "--out", str(out), "--features", "128", "--no-progress"])
    assert rc == 1 and "feature index 128 out of range; valid: 0..127" in capsys.readouterr().err


def test_search_refuses_text_longer_than_context():
    lm = gemma()
    cfg = SAEConfig(arch="relu_l1", d_in=640, n_features=16)
    sae = SAE(cfg=cfg, params=init_params(cfg, jax.random.PRNGKey(0)), hook=HOOK)
    with pytest.raises(ValueError, match="33002 tokens; the context length is 32768"):
        search_text(lm, sae, "word " * 33000)
