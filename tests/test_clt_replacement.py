"""The CLT replacement model (issue 17 item 3) on the tiny 3-block Gemma 3: with the clean pass's
error terms it reproduces the clean logits; without them it equals a hand-built block-by-block
replacement (each layer's features read the *replaced* model's resid_mid, computed in numpy, and the
MLP outputs set through the LM's own edits); the decoder-mass shares equal a numpy formula; the
held-out fvu / L0 equal jaxdict.clt.forward's; `jaxdict eval` on a CLT run writes them."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdict.clt.config import CLTConfig
from jaxdict.clt.evaluate import decoder_mass, heldout_metrics, replacement_metrics
from jaxdict.clt.forward import forward
from jaxdict.clt.params import CLTParams, init_params
from jaxdict.clt.replacement import encode_layer, run_replaced
from jaxdict.evaluate.spliced import pad_windows, token_losses, zero_ablation_edit
from tiny_lm import D_MODEL, tiny_lm

N_LAYERS, F = 3, 12
TEXTS = ("def f(x):\n    return x + 1", "import os\nprint(os.sep)")


def tiny_clt(arch="jumprelu", seed=0) -> tuple[CLTParams, CLTConfig]:
    """Random raw-unit CLT whose features fire on the tiny LM's resid_mid (θ = 0.3, unit-norm W_enc
    columns on residuals of norm ~4) and whose decoders are big enough to move the logits."""
    k = {"k": 3} if arch == "topk" else {}
    cfg = CLTConfig(n_layers=N_LAYERS, d_model=D_MODEL, n_features=F, arch=arch, **k)
    p = init_params(cfg, jax.random.PRNGKey(seed))
    rng = np.random.default_rng(seed)
    threshold = None if arch == "topk" else jnp.full((N_LAYERS, F), 0.3, jnp.float32)
    return p.replace(b_enc=jnp.asarray(rng.normal(0, 0.2, (N_LAYERS, F)), jnp.float32),
                     W_dec=tuple(2.0 * w for w in p.W_dec), threshold=threshold,
                     b_dec=jnp.asarray(rng.normal(0, 0.1, (N_LAYERS, D_MODEL)), jnp.float32)), cfg


def batch(lm):
    ids, mask = pad_windows([lm.tokenizer.encode(t) for t in TEXTS], lm.tokenizer.pad_id)  # quantum 32: the shapes replacement_metrics compiles
    where = mask.copy()
    where[:, 0] = False
    return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(where)


def run(lm, clt, cfg, mode, ids, mask, where, errors=None):
    return run_replaced(lm.params, clt, ids, mask, where, errors, config=lm.config, cfg=cfg, mode=mode)


def test_with_error_terms_the_replacement_is_the_clean_model():
    lm, (clt, cfg) = tiny_lm(n_layers=N_LAYERS), tiny_clt()
    ids, mask, where = batch(lm)
    clean, resid_mid, mlp_out = run(lm, clt, cfg, "clean", ids, mask, where)
    np.testing.assert_allclose(np.asarray(clean), np.asarray(lm.logits(ids, mask)), rtol=1e-6, atol=1e-5)
    from jaxdict.clt.replacement import clean_errors

    errors = clean_errors(clt, resid_mid, mlp_out, cfg=cfg)
    with_err, _, out_err = run(lm, clt, cfg, "replace", ids, mask, where, errors)
    m = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(with_err)[m], np.asarray(clean)[m], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out_err), np.asarray(mlp_out), rtol=1e-5, atol=1e-5)
    pure = run(lm, clt, cfg, "replace", ids, mask, where)[0]
    assert np.abs(np.asarray(pure)[m] - np.asarray(clean)[m]).max() > 0.1  # the errors did matter


def test_pure_replacement_equals_a_hand_built_block_by_block_one():
    """JumpReLU only: the TopK encoder is the same code (encode_layer), checked against
    jaxdict.clt.forward in test_heldout_fvu_and_l0_equal_the_clt_forward; each arch here costs compiles."""
    arch = "jumprelu"
    lm, (clt, cfg) = tiny_lm(n_layers=N_LAYERS), tiny_clt(arch)
    ids, mask, where = batch(lm)
    got, resid_got, _ = run(lm, clt, cfg, "replace", ids, mask, where)
    W_enc, b_enc, b_dec = (np.asarray(a, np.float64) for a in (clt.W_enc, clt.b_enc, clt.b_dec))
    W_dec = [np.asarray(w, np.float64) for w in clt.W_dec]

    def set_to(y, args):  # the LM's own edit: mlp_out := a fixed array where `where`
        value, w = args
        return jnp.where(w[..., None], value, y)

    pending = np.zeros((N_LAYERS,) + ids.shape + (D_MODEL,))
    edits, fired = {}, 0
    for layer in range(N_LAYERS):  # resid_mid.l of the model whose MLPs < l are already replaced
        x = np.asarray(lm.activations(ids, f"resid_mid.{layer}", mask, edits=edits), np.float64)
        z = x @ W_enc[layer] + b_enc[layer]
        if arch == "topk":
            keep = z >= np.sort(z, axis=-1)[..., -cfg.k][..., None]
            a = np.maximum(z, 0) * keep
        else:
            a = z * (z > 0.3)
        fired += int(np.sum(a[np.asarray(where)] > 0))
        for m in range(N_LAYERS - layer):
            pending[layer + m] += a @ W_dec[layer][:, m]
        y_hat = jnp.asarray(pending[layer] + b_dec[layer], jnp.float32)
        edits[f"mlp_out.{layer}"] = (set_to, (y_hat, where))
    assert fired > 10  # the features are not all silent
    want = np.asarray(lm.logits(ids, mask, edits=edits))
    m = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(got)[m], want[m], rtol=1e-4, atol=1e-4)

    # the metrics: pure replacement and zero ablation as the LM's own edits give them
    windows = [list(np.asarray(r)[np.asarray(k)]) for r, k in zip(ids, mask)]
    r = replacement_metrics(lm, clt, cfg, windows, batch_size=2)
    zero = lm.logits(ids, mask, edits={f"mlp_out.{l}": (zero_ablation_edit, where) for l in range(N_LAYERS)})
    clean = lm.logits(ids, mask)
    loss_mask = np.asarray(where)[:, :-1] & m[:, 1:]
    ce_c, ce_r, kl_r = (np.asarray(v) for v in token_losses(clean, jnp.asarray(want), ids))
    _, ce_z, _ = (np.asarray(v) for v in token_losses(clean, zero, ids))
    assert r["ce_clean"] == pytest.approx(ce_c[loss_mask].mean(), rel=1e-5)
    assert r["delta_ce"] == pytest.approx(ce_r[loss_mask].mean() - ce_c[loss_mask].mean(), rel=1e-3, abs=1e-5)
    assert r["kl"] == pytest.approx(kl_r[np.asarray(where)].mean(), rel=1e-3, abs=1e-6)
    assert r["ce_zero_ablation"] == pytest.approx(ce_z[loss_mask].mean(), rel=1e-5)
    assert abs(r["delta_ce_with_errors"]) < 1e-4 and r["kl_with_errors"] < 1e-6
    assert r["max_logit_diff_with_errors"] < 1e-4 and r["kl"] > 1e-3


def test_decoder_mass_equals_a_numpy_formula():
    clt, _ = tiny_clt()
    rng = np.random.default_rng(1)
    W = [rng.normal(size=w.shape) * (1 + layer) for layer, w in enumerate(clt.W_dec)]
    out = decoder_mass(clt.replace(W_dec=tuple(W)))
    total = np.array([np.einsum("imd,imd->", w, w) for w in W])
    same = np.array([np.einsum("id,id->", w[:, 0], w[:, 0]) for w in W])
    np.testing.assert_allclose(out["decoder_share_beyond"], (total - same) / total, rtol=1e-12)
    assert out["decoder_share_beyond"][-1] == 0  # the last layer writes only to itself
    assert out["decoder_share_beyond_overall"] == pytest.approx((total - same).sum() / total.sum(), rel=1e-12)
    assert not out["effectively_per_layer_transcoders"]
    L = len(W)  # equal mass per block: (L − l − 1)/(L − l); overall Σ(L − l − 1)/Σ(L − l) = (L − 1)/(L + 1)
    uniform = decoder_mass(clt.replace(W_dec=tuple(np.ones_like(w) for w in W)))
    np.testing.assert_allclose(uniform["decoder_share_beyond"], uniform["decoder_share_beyond_uniform"], rtol=1e-12)
    assert uniform["decoder_share_beyond_overall"] == pytest.approx(uniform["decoder_share_beyond_uniform_overall"])
    assert uniform["decoder_share_beyond_uniform_overall"] == pytest.approx((L - 1) / (L + 1))
    diagonal = [np.concatenate([w[:, :1], 1e-3 * w[:, 1:]], axis=1) for w in W]
    flat = decoder_mass(clt.replace(W_dec=tuple(diagonal)))
    assert flat["decoder_share_beyond_overall"] < 1e-5 and flat["effectively_per_layer_transcoders"]


@pytest.mark.parametrize("arch", ["jumprelu", "topk", "batchtopk"])
def test_heldout_fvu_and_l0_equal_the_clt_forward(arch):
    clt, cfg = tiny_clt(arch if arch != "batchtopk" else "jumprelu")
    cfg = CLTConfig(n_layers=N_LAYERS, d_model=D_MODEL, n_features=F, arch=arch,
                    **({"k": 3} if arch != "jumprelu" else {}))
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1.5, (300, N_LAYERS, D_MODEL)).astype(np.float32)
    y = (rng.normal(0, 1, (300, N_LAYERS, D_MODEL)) + 3).astype(np.float32)
    got = heldout_metrics(clt, cfg, [(x[:150], y[:150]), (x[150:], y[150:])])  # one shape: one compile
    out = forward(clt, jnp.asarray(x), cfg, train=False)
    for layer in range(N_LAYERS):
        a = encode_layer(clt, jnp.asarray(x[:, layer]), layer, cfg)
        np.testing.assert_allclose(np.asarray(a), np.asarray(out.latents[:, layer]), rtol=1e-5, atol=1e-5)
    res = np.asarray(out.y_hat, np.float64) - y
    var = np.sum(np.square(y - y.mean(axis=0)), axis=(0, 2))
    np.testing.assert_allclose(got["fvu_per_layer"], np.sum(res ** 2, axis=(0, 2)) / var, rtol=1e-4)
    np.testing.assert_allclose(got["l0_per_layer"], np.asarray(out.l0), rtol=1e-6)
    fired = np.sum(np.asarray(out.latents) > 0, axis=0)  # [L, F]
    np.testing.assert_array_equal(got["dead_frac_per_layer"], np.mean(fired == 0, axis=1))
    np.testing.assert_array_equal(got["dense_frac_per_layer"], np.mean(fired / 300 > 0.1, axis=1))
    assert got["n_tokens"] == 300 and 0 < got["l0"] <= F


def test_jaxdict_eval_of_a_clt_run(tmp_path, capsys):
    from jaxdict.cli import main
    from jaxdict.clt.run import load_clt_run
    from jaxdict.train.driver import train
    from test_clt_train import D, L, config, raw_rows, write_clt_stores

    root = write_clt_stores(tmp_path / "stores")
    run_dir = tmp_path / "run"
    train(config(root, steps=4, mesh=(1, 1), log_every=2, checkpoint_every=4), run_dir)
    out = tmp_path / "eval"
    assert main(["eval", str(run_dir), "--out", str(out), "--text-tokens", "0", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "mass beyond" in printed and "wrote" in printed
    result = json.loads((out / "eval.json").read_text())
    run = load_clt_run(run_dir)
    # the held-out rows: documents of the eval split (eval_fraction 0.1 of test_clt_train's config)
    from jaxdict.clt.eval_run import open_clt_stores
    from jaxdict.evaluate import heldout

    stores = open_clt_stores(root, L, D)
    ranges = heldout.split_ranges(stores[0], "eval", 0.1)
    rows = raw_rows().reshape(-1, 2, L, D)[np.concatenate([np.arange(a, b) for a, b in ranges])]
    want = heldout_metrics(run.params, run.cfg, [(rows[:, 0], rows[:, 1])])
    assert result["n_tokens"] == len(rows) > 0
    np.testing.assert_allclose(result["fvu_per_layer"], want["fvu_per_layer"], rtol=1e-5)
    assert result["decoder_share_beyond_overall"] == decoder_mass(run.params)["decoder_share_beyond_overall"]
    assert main(["eval", str(run_dir), "--out", str(out), "--corpus", "default"]) == 1
    assert "--corpus is for SAEs" in capsys.readouterr().err
