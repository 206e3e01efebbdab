"""circuit-tracer interop (issue 16 item 5): circuit-tracer 0.5.0 loads our per-layer transcoder
export and encodes real Gemma 3 270M layer-9 `mlp_in` rows as jaxdict does (to 1e-4); Gemma Scope 2
and Gemma Scope params.npz imports agree with circuit-tracer's own loaders of the same files."""
from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

import jaxdict.lm
from jaxdict.sae.circuit_tracer_io import export_circuit_tracer, import_circuit_tracer
from jaxdict.sae.gemma_scope_io import load_gemma_scope_2, load_gemma_scope_npz
from jaxdict.sae.raw_transcoder import (InteropError, RawTranscoder, decode_reference, encode_reference,
                                        sae_from_raw, transcoder_fields)

LAYER, F = 9, 256
TEXTS = ("import hashlib\n\ndef check(password, stored):\n    return hashlib.sha256(password).hexdigest()\n",
         "The committee met on Tuesday to discuss the budget, but no decision was reached before noon.")
CALIBRATION = "Le chat dort sur le canapé pendant que la pluie tombe doucement dehors."


def circuit_tracer():
    """circuit_tracer, importable beside our pins. It is installed with --no-deps (.ci/run): 0.5.0
    pins transformers<=4.57.3 and huggingface-hub<1.0, which transformer-lens 3.9 excludes. Its
    hf_utils imports HF_HUB_ENABLE_HF_TRANSFER, a constant huggingface-hub 2 dropped; it only picks
    sequential downloads there, and nothing here downloads, so the old default (False) stands in."""
    ct = pytest.importorskip("circuit_tracer")
    import huggingface_hub.constants as hub_constants

    if not hasattr(hub_constants, "HF_HUB_ENABLE_HF_TRANSFER"):
        hub_constants.HF_HUB_ENABLE_HF_TRANSFER = False
    return ct


@pytest.fixture(scope="module")
def rows():
    """Real rows of Gemma 3 270M at layer 9: mlp_in, resid_mid, the pre-FFN norm's (1 + w), and a
    calibration batch from another text (thresholds are set on it, not on the rows tested)."""
    lm = jaxdict.lm.load("gemma3-270m")

    def acts(text):
        ids = jnp.asarray([lm.tokenizer.encode(text)], jnp.int32)
        out = lm.activations(ids, [f"mlp_in.{LAYER}", f"resid_mid.{LAYER}"])
        return {h: np.asarray(v[0], np.float32) for h, v in out.items()}

    tested = [acts(t) for t in TEXTS]
    return {"mlp_in": np.concatenate([a[f"mlp_in.{LAYER}"] for a in tested]),
            "resid_mid": np.concatenate([a[f"resid_mid.{LAYER}"] for a in tested]),
            "calibration": acts(CALIBRATION)[f"mlp_in.{LAYER}"],
            "norm_weight": np.asarray(lm.params["layers"][LAYER]["ffn_norm"], np.float32),
            "eps": lm.config.rms_norm_eps}


def make_transcoder(arch: str, skip: bool, calibration: np.ndarray, seed: int = 0) -> RawTranscoder:
    """Random weights at the data's scale; JumpReLU / BatchTopK thresholds at each feature's 90th
    percentile of z on the calibration rows, so about a tenth of the features fire."""
    rng = np.random.default_rng(seed)
    d = calibration.shape[1]
    W_enc = rng.normal(size=(d, F)) / np.sqrt(d) * 3
    b_enc = rng.normal(size=F) * 0.1
    arrays = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": rng.normal(size=(F, d)) * 0.1,
              "b_dec": rng.normal(size=d) * 0.1}
    if arch in ("jumprelu", "batchtopk"):
        arrays["threshold"] = np.maximum(np.quantile(calibration @ W_enc + b_enc, 0.9, axis=0), 0.05)
    if skip:
        arrays["W_skip"] = rng.normal(size=(d, d)) / np.sqrt(d) * 0.3
    fields = transcoder_fields(arch, W_enc, arrays["W_dec"], skip, k=8 if arch == "topk" else None)
    arrays = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
    return RawTranscoder(fields, arrays, f"mlp_in.{LAYER}", f"mlp_out.{LAYER}", "gemma3-270m", arch).check()


def tl_hook_normalized(resid_mid: np.ndarray, eps: float):
    """TransformerLens's `ln2.hook_normalized`: x / sqrt(mean(x²) + eps), no weight (rms_norm.py)."""
    import torch

    x = torch.from_numpy(resid_mid)
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def load_export(folder):
    from circuit_tracer.utils.caching import load_transcoders_from_cache

    circuit_tracer()
    # circuit-tracer's own local route: <cache_dir>/<name>/config.yaml + layer_<L>.safetensors.
    transcoders, config = load_transcoders_from_cache(folder.name, cache_dir=folder.parent,
                                                      device=None, dtype=__import__("torch").float32)
    return transcoders, config


CASES = [("jumprelu", False, "mlp.hook_in"), ("jumprelu", True, "ln2.hook_normalized"),
         ("batchtopk", True, "mlp.hook_in"), ("relu_l1", True, "ln2.hook_normalized"),
         ("relu_l1", False, "mlp.hook_in")]


@pytest.mark.parametrize("arch,skip,input_hook", CASES)
def test_circuit_tracer_encodes_our_mlp_in_rows(tmp_path, rows, arch, skip, input_hook):
    circuit_tracer()
    import torch

    raw = make_transcoder(arch, skip, rows["calibration"])
    out = export_circuit_tracer(tmp_path / f"{arch}-{skip}", {LAYER: raw}, input_hook=input_hook,
                                norm_weights={LAYER: rows["norm_weight"]}, pad_missing_layers=True)
    ts, config = load_export(out)
    assert config["feature_input_hook"] == input_hook and config["feature_output_hook"] == "hook_mlp_out"
    assert ts.n_layers == LAYER + 1 and ts.skip_connection == skip

    # What circuit-tracer's hook hands the transcoder, from the same tokens: the pre-FFN norm output
    # (weight included) for mlp.hook_in; x / rms(x) of resid_mid, as TL computes it, for ln2.hook_normalized.
    hook_value = (torch.from_numpy(rows["mlp_in"]) if input_hook == "mlp.hook_in"
                  else tl_hook_normalized(rows["resid_mid"], rows["eps"]))
    with torch.no_grad():
        f_ct = ts.encode_layer(hook_value, LAYER)
        y_ct = ts[LAYER].decode(f_ct, hook_value).numpy()
    # jaxdict's side: its inference SAE (jaxdict.sae.inference) built from the same arrays, checked
    # against the float64 statement of the maths (raw_transcoder.encode_reference).
    sae, x = sae_from_raw(raw), rows["mlp_in"]
    assert sae.cfg.is_transcoder and sae.cfg.skip_connection == skip and sae.target_hook == f"mlp_out.{LAYER}"
    f_ours = np.asarray(sae.encode(x))
    y_ours = np.asarray(sae.decode(f_ours, x))
    assert np.abs(f_ours - encode_reference(raw, x)).max() <= 1e-4
    assert np.abs(y_ours - decode_reference(raw, f_ours, x)).max() <= 1e-4
    active = (f_ours > 0).mean()
    assert 0.02 < active < 0.6, f"fraction active {active}: the test needs features that fire"
    assert np.array_equal(f_ct.numpy() > 0, f_ours > 0), "different features fire"
    f_diff, y_diff = np.abs(f_ct.numpy() - f_ours).max(), np.abs(y_ct - y_ours).max()
    print(f"{arch} skip={skip} {input_hook}: max|Δf| {f_diff:.2e}, max|Δŷ| {y_diff:.2e}, "
          f"{len(f_ours)} rows, active {active:.3f}")
    assert f_diff <= 1e-4 and y_diff <= 1e-4
    with torch.no_grad():  # the padded layers never fire
        assert not ts.encode_layer(hook_value, 0).any()


def test_features_are_wrong_inside_the_model_without_the_norm_fold(tmp_path, rows):
    """The hook finding matters: TL's ln2.hook_normalized lacks Gemma's (1 + w), so weights for
    mlp_in, exported unfolded under that hook, fire the wrong features inside the model."""
    circuit_tracer()
    import torch

    # The one layer-9 channel whose multiplier is 0: mlp_in is exactly 0 there, on every token.
    assert (rows["norm_weight"] == 0).sum() == 1
    assert not rows["mlp_in"][:, rows["norm_weight"] == 0].any()
    raw = make_transcoder("jumprelu", False, rows["calibration"])
    out = export_circuit_tracer(tmp_path / "unfolded", {LAYER: raw}, input_hook="mlp.hook_in",
                                pad_missing_layers=True)
    ts, _ = load_export(out)
    with torch.no_grad():
        f_wrong = ts.encode_layer(tl_hook_normalized(rows["resid_mid"], rows["eps"]), LAYER).numpy()
    f_ours = encode_reference(raw, rows["mlp_in"])
    assert np.abs(f_wrong - f_ours).max() > 1.0
    assert (f_wrong > 0).sum() != (f_ours > 0).sum() or not np.array_equal(f_wrong > 0, f_ours > 0)


def test_export_import_round_trip(tmp_path, rows):
    for arch, skip, input_hook in CASES:
        raw = make_transcoder(arch, skip, rows["calibration"], seed=1)
        norms = {LAYER: rows["norm_weight"]}
        out = export_circuit_tracer(tmp_path / f"{arch}{skip}{input_hook}", {LAYER: raw},
                                    input_hook=input_hook, norm_weights=norms, pad_missing_layers=True)
        back = import_circuit_tracer(out, norm_weights=norms)
        assert list(back) == [LAYER]
        got = back[LAYER]
        assert got.fields == raw.fields and (got.input_hook, got.output_hook) == (raw.input_hook, raw.output_hook)
        # Channels whose norm multiplier is exactly 0 (mlp_in is always 0 there) cannot be unfolded.
        dead = (rows["norm_weight"] == 0) if input_hook == "ln2.hook_normalized" else np.zeros(640, bool)
        for name, a in raw.arrays.items():  # the norm fold and unfold round in float32
            want = np.where(dead[:, None], 0, a) if name in ("W_enc", "W_skip") else a
            np.testing.assert_allclose(got.arrays[name], want, rtol=1e-6, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(encode_reference(got, rows["mlp_in"]), encode_reference(raw, rows["mlp_in"]),
                                   atol=1e-5)
    with pytest.raises(InteropError, match=r"pass norm_weights\[9\]"):
        import_circuit_tracer(tmp_path / "relu_l1Trueln2.hook_normalized")


def test_export_refusals(tmp_path, rows):
    cal = rows["calibration"]
    with pytest.raises(InteropError, match="without a ReLU"):
        export_circuit_tracer(tmp_path / "a", {LAYER: make_transcoder("topk", False, cal)}, pad_missing_layers=True)
    jr = make_transcoder("jumprelu", False, cal)
    with pytest.raises(InteropError, match=r"missing \[0, 1, 2, 3, 4, 5, 6, 7, 8\]"):
        export_circuit_tracer(tmp_path / "b", {LAYER: jr})
    with pytest.raises(InteropError, match="norm_weights"):
        export_circuit_tracer(tmp_path / "c", {LAYER: jr}, input_hook="ln2.hook_normalized",
                              pad_missing_layers=True)
    with pytest.raises(InteropError, match="input_hook 'hook_resid_mid'"):
        export_circuit_tracer(tmp_path / "d", {LAYER: jr}, input_hook="hook_resid_mid")
    with pytest.raises(InteropError, match="must map mlp_in.3"):
        export_circuit_tracer(tmp_path / "e", {3: jr}, pad_missing_layers=True)
    narrow = RawTranscoder({**jr.fields, "d_out": 16}, {**jr.arrays, "W_dec": jr.arrays["W_dec"][:, :16],
                                                       "b_dec": jr.arrays["b_dec"][:16]}, source="narrow")
    with pytest.raises(InteropError, match="d_in=640 != d_out=16"):
        export_circuit_tracer(tmp_path / "f", {0: narrow})
    with pytest.raises(InteropError, match="W_enc has shape"):
        RawTranscoder(jr.fields, {**jr.arrays, "W_enc": jr.arrays["W_enc"][:, :8]}).check()


def write_gemma_scope_2(folder, raw: RawTranscoder, config: dict | None = None):
    """A Gemma Scope 2 params.safetensors (w_enc [d_in, F], affine_skip_connection [d_in, d_out])."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    a = raw.arrays
    t = {"w_enc": a["W_enc"], "w_dec": a["W_dec"], "b_enc": a["b_enc"], "b_dec": a["b_dec"],
         "threshold": a["threshold"]}
    if "W_skip" in a:
        t["affine_skip_connection"] = a["W_skip"]
    save_file(t, str(folder / "params.safetensors"))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder / "params.safetensors"


@pytest.mark.parametrize("skip", [False, True])
def test_gemma_scope_2_transcoder_import_matches_circuit_tracers_loader(tmp_path, rows, skip):
    """Our import of a Gemma Scope 2 (skip) transcoder, exported again, encodes and decodes real rows
    as circuit-tracer's own Gemma Scope 2 loader does on the original file."""
    circuit_tracer()
    import torch
    from circuit_tracer.transcoder.single_layer_transcoder import load_gemma_scope_2_transcoder

    src = make_transcoder("jumprelu", skip, rows["calibration"], seed=2)
    folder = tmp_path / "transcoder" / f"layer_{LAYER}_width_16k_l0_small{'_affine' if skip else ''}"
    path = write_gemma_scope_2(folder, src)
    raw = load_gemma_scope_2(folder)
    assert (raw.input_hook, raw.output_hook, raw.fields["skip_connection"]) == (f"mlp_in.{LAYER}",
                                                                                f"mlp_out.{LAYER}", skip)
    for name, a in src.arrays.items():
        np.testing.assert_array_equal(raw.arrays[name], a, err_msg=name)
    native = load_gemma_scope_2_transcoder(str(path), LAYER, device=torch.device("cpu"))
    ts, _ = load_export(export_circuit_tracer(tmp_path / "ours", {LAYER: raw}, pad_missing_layers=True))
    x = torch.from_numpy(rows["mlp_in"])
    with torch.no_grad():
        f_native, f_ours = native.encode(x), ts.encode_layer(x, LAYER)
        y_native, y_ours = native.decode(f_native, x), ts[LAYER].decode(f_ours, x)
    assert (f_native > 0).any()
    np.testing.assert_array_equal(f_ours.numpy(), f_native.numpy())
    np.testing.assert_array_equal(y_ours.numpy(), y_native.numpy())
    np.testing.assert_allclose(f_native.numpy(), encode_reference(raw, rows["mlp_in"]), atol=1e-4)


def test_gemma_scope_2_config_and_saes(tmp_path, rows):
    tc = make_transcoder("jumprelu", True, rows["calibration"], seed=3)
    cfg = {"architecture": "jump_relu", "model_name": "gemma-v3-270m-pt", "affine_connection": True,
           "hf_hook_point_in": "model.layers.4.pre_feedforward_layernorm.output",
           "hf_hook_point_out": "model.layers.4.post_feedforward_layernorm.output"}
    raw = load_gemma_scope_2(write_gemma_scope_2(tmp_path / "anywhere", tc, cfg))  # config.json wins over the path
    assert (raw.input_hook, raw.output_hook, raw.model) == ("mlp_in.4", "mlp_out.4", "gemma3-270m")

    # An SAE keeps jaxdict's SAE convention ((x - b_dec) W_enc + b_enc): same latents as Gemma Scope's x W_enc + b_enc.
    sae_src = RawTranscoder({"arch": "jumprelu", "d_in": 640, "n_features": F},
                            {k: v for k, v in tc.arrays.items() if k != "W_skip"})
    x = rows["mlp_in"]
    want = x @ tc.arrays["W_enc"].astype(np.float64) + tc.arrays["b_enc"]
    want = want * (want > tc.arrays["threshold"])
    for kind in ("resid_post", "mlp_out"):
        sae = load_gemma_scope_2(write_gemma_scope_2(tmp_path / f"{kind}_all" / "layer_7_width_16k_l0_big", sae_src))
        assert (sae.input_hook, sae.output_hook, sae.is_transcoder) == (f"{kind}.7", None, False)
        np.testing.assert_allclose(encode_reference(sae, x), want, atol=1e-4)
    for name, match in (("attn_out_all/layer_7_width_16k_l0_big", "o_proj"), ("clt/layer_7", "cross-layer"),
                        ("misc/layer_7", "pass kind")):
        with pytest.raises(InteropError, match=match):
            load_gemma_scope_2(write_gemma_scope_2(tmp_path / name, sae_src))
    with pytest.raises(InteropError, match="missing tensors"):
        from safetensors.numpy import save_file
        (tmp_path / "bad").mkdir()
        save_file({"w_enc": tc.arrays["W_enc"]}, str(tmp_path / "bad" / "params.safetensors"))
        load_gemma_scope_2(tmp_path / "bad")


def test_gemma_scope_npz_transcoder_matches_circuit_tracers_loader(tmp_path, rows):
    circuit_tracer()
    import torch
    from circuit_tracer.transcoder.single_layer_transcoder import load_gemma_scope_transcoder

    src = make_transcoder("jumprelu", False, rows["calibration"], seed=4)
    path = tmp_path / "gemma-scope-2b-pt-transcoders" / f"layer_{LAYER}" / "width_16k" / "average_l0_76" / "params.npz"
    path.parent.mkdir(parents=True)
    np.savez(path, **{k: src.arrays[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")})
    raw = load_gemma_scope_npz(path)
    assert (raw.input_hook, raw.output_hook, raw.is_transcoder) == (f"mlp_in.{LAYER}", f"mlp_out.{LAYER}", True)
    native = load_gemma_scope_transcoder(str(path), LAYER, device=torch.device("cpu"))
    with torch.no_grad():
        f_native = native.encode(torch.from_numpy(rows["mlp_in"])).numpy()
    assert (f_native > 0).any()
    np.testing.assert_allclose(f_native, encode_reference(raw, rows["mlp_in"]), atol=1e-4)

    res = tmp_path / "gemma-scope-2b-pt-res" / "layer_3" / "width_16k" / "average_l0_76" / "params.npz"
    res.parent.mkdir(parents=True)
    np.savez(res, **{k: src.arrays[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")})
    sae = load_gemma_scope_npz(res)
    assert (sae.input_hook, sae.is_transcoder) == ("resid_post.3", False)
    np.testing.assert_allclose(encode_reference(sae, rows["mlp_in"]), f_native, atol=1e-4)
    plain = tmp_path / "downloads" / "params.npz"
    plain.parent.mkdir()
    plain.write_bytes(res.read_bytes())
    with pytest.raises(InteropError, match="pass kind"):
        load_gemma_scope_npz(plain)
    assert load_gemma_scope_npz(plain, kind="transcoder").input_hook is None  # no layer_<L> in the path


# -- the replacement model on an HF-format Gemma 3 270M written from our GGUF weights ---------------
@pytest.fixture(scope="module")
def hf_gemma(tmp_path_factory):
    """The embedded model written as a Hugging Face folder, loaded in transformers (float32, eager
    attention), and the jaxdict model it came from."""
    pytest.importorskip("transformers")
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM

    from jaxdict.lm.hf_writer import write_hf_folder

    lm = jaxdict.lm.load("gemma3-270m")
    folder = write_hf_folder(lm, tmp_path_factory.mktemp("hf") / "gemma3-270m")
    hf = Gemma3ForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager").eval()
    return lm, folder, hf, AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.slow
def test_hf_folder_is_our_model(hf_gemma):
    """jaxdict reads the folder back bit for bit; transformers runs it as jaxdict does, and its
    pre_feedforward_layernorm output (circuit-tracer's nnsight `mlp.hook_in`) is our mlp_in."""
    import torch

    lm, folder, hf, tok = hf_gemma
    ids = lm.tokenizer.encode(TEXTS[0])
    for text in (*TEXTS, CALIBRATION, "a\n\n  b   c\t d"):
        assert tok(text)["input_ids"] == lm.tokenizer.encode(text)
    back = jaxdict.lm.load(str(folder))
    for a, b in zip(jax_leaves(back.params), jax_leaves(lm.params)):
        np.testing.assert_array_equal(a, b)
    ours = lm.activations(jnp.asarray([ids], jnp.int32), [f"mlp_in.{LAYER}", f"mlp_out.{LAYER}"])
    logits = np.asarray(lm.logits(jnp.asarray([ids], jnp.int32)))[0]
    seen = {}
    block = hf.model.layers[LAYER]
    block.pre_feedforward_layernorm.register_forward_hook(lambda m, i, o: seen.__setitem__("mlp_in", o))
    block.post_feedforward_layernorm.register_forward_hook(lambda m, i, o: seen.__setitem__("mlp_out", o))
    with torch.no_grad():
        hf_logits = hf(torch.tensor([ids])).logits[0].numpy()
    d_in = np.abs(seen["mlp_in"][0].numpy() - np.asarray(ours[f"mlp_in.{LAYER}"])[0]).max()
    out = np.asarray(ours[f"mlp_out.{LAYER}"])[0]
    d_out = np.abs(seen["mlp_out"][0].numpy() - out).max() / np.abs(out).max()
    d_logits = np.abs(hf_logits - logits).max()
    print(f"HF vs jaxdict: mlp_in max|Δ| {d_in:.2e}, mlp_out max|Δ|/max|y| {d_out:.2e}, logits max|Δ| {d_logits:.2e}")
    assert d_in < 1e-4 and d_out < 1e-5 and d_logits < 1e-3


def jax_leaves(tree):
    import jax

    return [np.asarray(a) for a in jax.tree.leaves(tree)]


@pytest.mark.slow
def test_replacement_model_features_match_jaxdict(tmp_path, hf_gemma, rows):
    """circuit-tracer's ReplacementModel (TransformerLens backend, fold_ln=False) on the HF folder,
    with our layer-9 skip transcoder exported under ln2.hook_normalized (norm weight folded in):
    its feature activations inside the model equal jaxdict's on our mlp_in, to 1e-3."""
    circuit_tracer()
    import os

    import torch
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel)

    from jaxdict.sae.circuit_tracer_torch import restore_per_layer_rope

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local
    lm, _, hf, tok = hf_gemma
    raw = make_transcoder("jumprelu", True, rows["calibration"])
    out = export_circuit_tracer(tmp_path / "tc", {LAYER: raw}, input_hook="ln2.hook_normalized",
                                norm_weights={LAYER: rows["norm_weight"]}, pad_missing_layers=True,
                                n_layers=lm.config.n_layers)
    ts, _ = load_export(out)
    model = TransformerLensReplacementModel.from_pretrained_and_transcoders(
        "google/gemma-3-270m", ts, hf_model=hf, tokenizer=tok, device="cpu", dtype=torch.float32)
    ids = torch.tensor([lm.tokenizer.encode(TEXTS[0])])
    f_ours = np.array(sae_from_raw(raw).encode(np.asarray(lm.activations(jnp.asarray(ids.numpy()), f"mlp_in.{LAYER}"))[0]))
    f_ours[0] = 0  # circuit-tracer zeroes the BOS position's features (zero_positions)

    _, shared_rope = model.get_activations(ids)
    assert np.abs(shared_rope[LAYER].numpy() - f_ours).max() > 0.1  # the bug is real: fix it, then compare
    restore_per_layer_rope(model)
    _, acts = model.get_activations(ids)
    f_ct = acts[LAYER].numpy()
    diff = np.abs(f_ct - f_ours).max()
    print(f"replacement model vs jaxdict, layer {LAYER} features: max|Δf| {diff:.2e}, "
          f"active {(f_ours > 0).mean():.3f}, {ids.shape[1]} tokens")
    assert (f_ours > 0).mean() > 0.02 and np.array_equal(f_ct > 0, f_ours > 0)
    assert diff <= 1e-3
    assert not acts[:LAYER].any() and not acts[LAYER + 1:].any()  # the padded layers never fire


def test_export_cli_gemma_scope_2_import_and_circuit_tracer_refusal(tmp_path, rows, capsys):
    from jaxdict.cli import main
    from jaxdict.sae.io import load_sae

    tc = make_transcoder("jumprelu", False, rows["calibration"], seed=5)
    sae_src = RawTranscoder({"arch": "jumprelu", "d_in": 640, "n_features": F}, tc.arrays)
    src = write_gemma_scope_2(tmp_path / "resid_post" / "layer_6_width_16k_l0_small", sae_src)
    assert main(["export", "--import", str(src.parent), "--model", "gemma3-270m", "--out", str(tmp_path / "imp")]) == 0
    sae = load_sae(tmp_path / "imp")
    assert (sae.hook, sae.model, sae.cfg.arch) == ("resid_post.6", "gemma3-270m", "jumprelu")
    x = rows["mlp_in"]
    want = x @ tc.arrays["W_enc"].astype(np.float64) + tc.arrays["b_enc"]
    np.testing.assert_allclose(np.asarray(sae.encode(x)), want * (want > tc.arrays["threshold"]), atol=1e-4)
    # An SAE is not a transcoder: circuit-tracer's export names what it reads.
    assert main(["export", str(tmp_path / "imp"), "--format", "circuit-tracer", "--out", str(tmp_path / "ct")]) == 1
    assert "reads 'resid_post.6'" in capsys.readouterr().err


def test_export_cli_writes_a_transcoder_for_circuit_tracer(tmp_path, rows, capsys):
    """A jaxdict transcoder (here via its SAELens export, which keeps the hooks) through
    `jaxdict export --format circuit-tracer`: circuit-tracer encodes our rows as jaxdict does."""
    circuit_tracer()
    import torch

    from jaxdict.cli import main
    from jaxdict.sae.io import export_saelens, load_sae
    from jaxdict.sae.raw_transcoder import raw_from_sae

    raw = make_transcoder("batchtopk", True, rows["calibration"], seed=6)
    sae = sae_from_raw(raw)
    back = raw_from_sae(sae)
    assert back.fields == raw.fields and (back.input_hook, back.output_hook) == (raw.input_hook, raw.output_hook)
    folder = export_saelens(sae, tmp_path / "saelens")
    assert load_sae(folder).target_hook == f"mlp_out.{LAYER}"
    assert main(["export", str(folder), "--format", "circuit-tracer", "--input-hook", "ln2.hook_normalized",
                 "--out", str(tmp_path / "ct")]) == 0
    assert "layers [9] of 18" in capsys.readouterr().out
    ts, config = load_export(tmp_path / "ct")
    assert ts.n_layers == 18 and config["model_name"] == "google/gemma-3-270m"
    with torch.no_grad():
        f_ct = ts.encode_layer(tl_hook_normalized(rows["resid_mid"], rows["eps"]), LAYER).numpy()
    f_ours = np.asarray(sae.encode(rows["mlp_in"]))
    assert (f_ours > 0).any() and np.abs(f_ct - f_ours).max() <= 1e-4


@pytest.mark.parametrize("skip", [False, True])
def test_topk_transcoder_set_in_memory(rows, skip):
    """TopK has no file form in circuit-tracer; the in-memory set (ReluTopK) encodes our rows as
    jaxdict does, where circuit-tracer's own TopK (no ReLU) keeps negative winners."""
    circuit_tracer()
    import torch
    from circuit_tracer.transcoder.activation_functions import TopK

    from jaxdict.sae.circuit_tracer_torch import transcoder_set

    raw = make_transcoder("topk", skip, rows["calibration"], seed=7)
    # Most pre-activations negative, so that some tokens have fewer than k positive ones.
    raw = RawTranscoder(raw.fields, {**raw.arrays, "b_enc": raw.arrays["b_enc"] - 3.0}, raw.input_hook,
                        raw.output_hook, raw.model, raw.source)
    ts = transcoder_set({LAYER: raw}, n_layers=18, input_hook="ln2.hook_normalized",
                        norm_weights={LAYER: rows["norm_weight"]})
    sae, x = sae_from_raw(raw), rows["mlp_in"]
    hook_value = tl_hook_normalized(rows["resid_mid"], rows["eps"])
    with torch.no_grad():
        f_ct = ts.encode_layer(hook_value, LAYER)
        y_ct = ts[LAYER].decode(f_ct, hook_value).numpy()
        no_relu = TopK(raw.fields["k"])(ts.encode_layer(hook_value, LAYER, apply_activation_function=False))
    f_ours = np.asarray(sae.encode(x))
    assert np.abs(f_ct.numpy() - f_ours).max() <= 1e-4
    assert np.abs(y_ct - np.asarray(sae.decode(f_ours, x))).max() <= 1e-4
    short = ((f_ours > 0).sum(-1) < raw.fields["k"]).mean()
    assert short > 0.1 and (no_relu < 0).any(), "the rows must show where the two TopKs differ"
    assert ts.n_layers == 18 and not ts.encode_layer(hook_value, 3).any()
