"""circuit-tracer's CrossLayerTranscoder loads our CLT export and encodes/decodes real Gemma 3 270M
resid_mid rows of all 18 layers as jaxdict does (to 1e-4), with per-layer scales folded; TopK is
refused; the Gemma Scope 2 CLT key layout imports as circuit-tracer's own loader reads it."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdict.lm
from jaxdict.clt.circuit_tracer_io import (CLTInteropError, export_clt_circuit_tracer, import_clt_circuit_tracer,
                                           import_gemma_scope_2_clt)
from jaxdict.clt.config import CLTConfig
from jaxdict.clt.forward import forward
from jaxdict.clt.params import CLTParams
from tests.test_circuit_tracer import circuit_tracer

F = 32
TEXT = "The committee met on Tuesday to discuss the budget, but no decision was reached before noon."
CALIBRATION = "Le chat dort sur le canapé pendant que la pluie tombe doucement dehors."


@pytest.fixture(scope="module")
def gemma_rows():
    """resid_mid.l [n, L, d] of Gemma 3 270M for a tested text and a calibration text."""
    lm = jaxdict.lm.load("gemma3-270m")
    L = lm.config.n_layers

    def acts(text):
        ids = jnp.asarray([lm.tokenizer.encode(text)], jnp.int32)
        out = lm.activations(ids, [f"resid_mid.{layer}" for layer in range(L)])
        return np.stack([np.asarray(out[f"resid_mid.{layer}"][0], np.float32) for layer in range(L)], axis=1)

    return acts(TEXT), acts(CALIBRATION)


def make_clt(arch: str, calibration: np.ndarray, seed: int = 0):
    """Random CLT weights for scaled inputs (E‖x_l·s_l‖² = d), thresholds at each feature's 90th
    percentile of z on the calibration rows (a tenth fire), and the per-layer scales."""
    rng = np.random.default_rng(seed)
    n, L, d = calibration.shape
    s_in = np.sqrt(d / np.mean(np.sum(calibration.astype(np.float64) ** 2, axis=-1), axis=0))
    s_out = rng.uniform(0.5, 2.0, size=L)
    W_enc = rng.normal(size=(L, d, F)) / np.sqrt(d)
    b_enc = rng.normal(size=(L, F)) * 0.1
    z = np.einsum("nld,ldf->nlf", calibration * s_in[None, :, None], W_enc) + b_enc
    threshold = np.maximum(np.quantile(z, 0.9, axis=0), 0.05)
    W_dec = tuple(rng.normal(size=(F, L - layer, d)) * 0.1 for layer in range(L))
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), CLTParams(
        W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=rng.normal(size=(L, d)) * 0.1, threshold=threshold))
    cfg = CLTConfig(n_layers=L, d_model=d, n_features=F, arch=arch, k=4 if arch != "jumprelu" else None)
    return params, cfg, s_in, s_out


def ours_raw(params, cfg, x, s_in, s_out):
    """Our inference forward on raw rows: scale in, unscale out."""
    out = forward(params, jnp.asarray(x * s_in[None, :, None], jnp.float32), cfg, train=False)
    return np.asarray(out.latents), np.asarray(out.y_hat) / s_out[None, :, None]


def circuit_tracer_raw(folder, x):
    """circuit-tracer's CLT from our folder (its cache route), encoding and decoding x [n, L, d]."""
    import torch

    circuit_tracer()  # before circuit_tracer.utils: it patches a constant huggingface-hub 2 dropped
    from circuit_tracer.utils.caching import load_transcoders_from_cache

    clt, config = load_transcoders_from_cache(folder.name, cache_dir=folder.parent, device=torch.device("cpu"),
                                              dtype=torch.float32, lazy_decoder=False)
    assert (config["feature_input_hook"], config["feature_output_hook"]) == ("hook_resid_mid", "hook_mlp_out")
    acts = clt.encode(torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2))))  # [L, n, F]
    with torch.no_grad():
        y = clt.decode(acts)  # [L, n, d]
    return acts.detach().numpy().transpose(1, 0, 2), y.numpy().transpose(1, 0, 2)


@pytest.mark.parametrize("arch", ["jumprelu", "batchtopk"])
def test_circuit_tracer_encodes_and_decodes_our_export(tmp_path, gemma_rows, arch):
    tested, calibration = gemma_rows
    params, cfg, s_in, s_out = make_clt(arch, calibration)
    folder = export_clt_circuit_tracer(tmp_path / "clt", params, cfg, input_scale=s_in, output_scale=s_out)
    ref_acts, ref_y = ours_raw(params, cfg, tested, s_in, s_out)
    acts, y = circuit_tracer_raw(folder, tested)
    assert 0.02 < np.mean(ref_acts > 0) < 0.3  # the comparison covers firing and silent features
    np.testing.assert_allclose(acts, ref_acts, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y, ref_y, rtol=1e-4, atol=1e-4)
    # and our import of the export is the raw-unit CLT
    back, back_cfg = import_clt_circuit_tracer(folder)
    back_acts, back_y = ours_raw(back, back_cfg, tested, np.ones(cfg.n_layers), np.ones(cfg.n_layers))
    np.testing.assert_allclose(back_acts, ref_acts, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(back_y, ref_y, rtol=1e-4, atol=1e-4)


def test_topk_and_untrained_batchtopk_are_refused(tmp_path, gemma_rows):
    params, cfg, _, _ = make_clt("topk", gemma_rows[1])
    with pytest.raises(CLTInteropError, match="arch 'topk' cannot be exported.*Valid archs: jumprelu, batchtopk"):
        export_clt_circuit_tracer(tmp_path / "t", params, cfg)
    params, cfg, _, _ = make_clt("batchtopk", gemma_rows[1])
    with pytest.raises(CLTInteropError, match="no inference threshold"):
        export_clt_circuit_tracer(tmp_path / "b", params.replace(threshold=np.zeros_like(params.threshold)), cfg)
    assert not (tmp_path / "t").exists() and not (tmp_path / "b").exists()


def test_gemma_scope_2_clt_import_matches_circuit_tracer_loader(tmp_path, gemma_rows):
    """Per-layer files in Gemma Scope 2's JumpReLUMultiLayerSAE keys; both loaders agree on real rows."""
    import torch
    from safetensors.numpy import save_file

    circuit_tracer()
    from circuit_tracer.transcoder.cross_layer_transcoder import load_gemma_scope_2_clt

    tested, calibration = gemma_rows
    params, cfg, s_in, _ = make_clt("jumprelu", calibration, seed=1)
    L, d = cfg.n_layers, cfg.d_model
    paths = {}
    for layer in range(L):
        w_dec = np.zeros((F, L, d), np.float32)
        w_dec[:, layer:] = params.W_dec[layer]
        paths[layer] = str(tmp_path / f"layer_{layer}.safetensors")
        save_file({"w_enc": params.W_enc[layer] * s_in[layer].astype(np.float32), "w_dec": w_dec,
                   "b_enc": params.b_enc[layer], "b_dec": params.b_dec[layer], "threshold": params.threshold[layer]},
                  paths[layer])
    ours, ours_cfg = import_gemma_scope_2_clt(paths)
    acts, y = ours_raw(ours, ours_cfg, tested, np.ones(L), np.ones(L))
    # circuit-tracer 0.5.0 loads layers range(max(paths)): one extra key makes it read all L files.
    clt = load_gemma_scope_2_clt({**paths, L: paths[L - 1]}, device=torch.device("cpu"), dtype=torch.float32)
    ct_acts = clt.encode(torch.from_numpy(np.ascontiguousarray(tested.transpose(1, 0, 2))))
    with torch.no_grad():
        ct_y = clt.decode(ct_acts).numpy().transpose(1, 0, 2)
    np.testing.assert_allclose(ct_acts.detach().numpy().transpose(1, 0, 2), acts, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ct_y, y, rtol=1e-4, atol=1e-4)
    assert np.mean(acts > 0) > 0.02
    with pytest.raises(CLTInteropError, match=r"keyed 0..L-1, got layers \[1, 2\]"):
        import_gemma_scope_2_clt({1: paths[1], 2: paths[2]})
