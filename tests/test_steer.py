"""Steering: the clamp keeps the SAE error term, a clamp to the current value changes nothing, an
ablation of an active feature changes the logits, and `jaxdict steer` end to end on Gemma 3 270M."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdict.evaluate.steering import clamp_edit, steering_edit
from jaxdict.sae.config import SAEConfig
from jaxdict.sae.inference import SAE
from jaxdict.sae.io import load_sae
from jaxdict.sae.params import init_params
from test_eval import HOOK, gemma, gemma_run, gemma_store  # noqa: F401 (fixtures)

PROMPT = "import os\nimport sys\n\ndef main(argv):\n    for name in argv:"


def _sae(arch):
    cfg = SAEConfig(arch=arch, d_in=16, n_features=40, k=5)
    p = init_params(cfg, jax.random.PRNGKey(2))
    return SAE(cfg=cfg, params=p.replace(b_enc=jnp.full((40,), 0.1, jnp.float32),
                                         b_dec=jnp.linspace(-1, 1, 16, dtype=jnp.float32)))


@pytest.mark.parametrize("arch", ["relu_l1", "topk", "jumprelu"])
def test_clamp_keeps_error_term(arch):
    sae = _sae(arch)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5, 16)), jnp.float32)
    idx, vals = jnp.asarray([4, 17], jnp.int32), jnp.asarray([2.5, -1.0], jnp.float32)
    got = clamp_edit(sae.cfg)(x, (sae.params, idx, vals))
    f = sae.encode(x)
    f_clamped = f.at[..., 4].set(2.5).at[..., 17].set(-1.0)
    want = sae.decode(f_clamped) + (x - sae.decode(f))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    # Clamping to the current value (one position, so one value per feature) is exactly a no-op.
    x1 = x[:1, :1]
    cur = sae.encode(x1)[0, 0, idx]
    np.testing.assert_array_equal(np.asarray(clamp_edit(sae.cfg)(x1, (sae.params, idx, cur))), np.asarray(x1))


def test_bad_feature_and_value_count():
    sae = _sae("relu_l1")
    with pytest.raises(ValueError, match="no hook"):
        steering_edit(sae, [1], [1.0])
    sae = SAE(cfg=sae.cfg, params=sae.params, hook=HOOK)
    with pytest.raises(ValueError, match=r"feature index 40 out of range; valid: 0..39"):
        steering_edit(sae, [40], [1.0])
    with pytest.raises(ValueError, match="2 features but 1 clamp values"):
        steering_edit(sae, [1, 2], [1.0])


def test_clamp_on_gemma_noop_and_ablation(gemma_run):
    lm = gemma()
    sae = load_sae(gemma_run)
    ids = jnp.asarray([lm.tokenizer.encode(PROMPT)], jnp.int32)
    f = np.asarray(sae.encode(lm.activations(ids, HOOK)[0]))  # [S, F], BOS included
    clean = np.asarray(lm.logits(ids))
    # A feature silent at every position: clamping it to its current value 0 changes nothing.
    silent = int(np.flatnonzero(f.max(0) == 0)[0])
    same = np.asarray(lm.logits(ids, edits=steering_edit(sae, [silent], [0.0])))
    np.testing.assert_array_equal(same, clean)
    # The most active feature (outside BOS) ablated with c = 0 changes the logits downstream.
    active = int(np.argmax(f[1:].max(0)))
    first = 1 + int(np.flatnonzero(f[1:, active] > 0)[0])
    ablated = np.asarray(lm.logits(ids, edits=steering_edit(sae, [active], [0.0])))
    assert np.abs(ablated[0, first:] - clean[0, first:]).max() > 1e-2
    if f[0, active] == 0:  # positions before the feature first fires are untouched (causal)
        np.testing.assert_array_equal(ablated[0, :first], clean[0, :first])


@pytest.mark.slow
def test_steer_cli_end_to_end(tmp_path, gemma_run, monkeypatch, capsys):
    import jaxdict.lm
    from jaxdict.cli import main

    monkeypatch.setattr(jaxdict.lm, "load", lambda name: gemma())
    lm = gemma()
    sae = load_sae(gemma_run)
    ids = jnp.asarray([lm.tokenizer.encode(PROMPT)], jnp.int32)
    f = np.asarray(sae.encode(lm.activations(ids, HOOK)[0, 1:]))
    feature = int(np.argmax(f.max(0)))
    max_dir = tmp_path / "feat"
    max_dir.mkdir()
    np.save(max_dir / "max_activations.npy", np.maximum(f.max(0), 1e-3).astype(np.float32))
    out = tmp_path / "steer"
    base = ["steer", str(gemma_run), "--feature", str(feature), "--prompt", PROMPT, "--max-new-tokens", "6"]
    rc = main(base + ["--strength", "1", "0", "20", "--max-activations", str(max_dir), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    r = json.loads((out / "steer.json").read_text())[0]
    assert r["features"] == [feature] and len(r["baseline"]["ids"]) == 6
    by_c = {s["strength"]: s for s in r["steered"]}
    assert by_c[20.0]["kl"] > by_c[1.0]["kl"] >= 0 and by_c[20.0]["kl"] > 1e-3
    # Clamped far above its range, the feature's promoted tokens gain probability and it reads back strongly.
    assert by_c[20.0]["dlogp_promoted"] > 0
    assert by_c[20.0]["readback"][0] > r["baseline"]["readback"][0]
    assert "c = 20" in (out / "steer.html").read_text() and "kl" in (out / "steer.txt").read_text()

    rc = main(base + ["--out", str(out)])
    assert rc == 1 and "no max activations known" in capsys.readouterr().err
    rc = main(["steer", str(gemma_run), "--feature", "999", "--prompt", "x", "--out", str(out)])
    assert rc == 1 and "feature index 999 out of range" in capsys.readouterr().err
    rc = main(base[:-2] + ["--max-new-tokens", "32760", "--max-activations", str(max_dir), "--out", str(out)])
    assert rc == 1 and "exceeds the context length 32768" in capsys.readouterr().err
