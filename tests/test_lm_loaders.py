"""Loaders: a small Gemma 3 GGUF with mixed quantisations (config from metadata, atomic cache),
an unsupported architecture, and a Hugging Face folder equal to the GGUF weights."""
from __future__ import annotations

import json

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

import jaxdict.lm
from jaxdict.lm import gguf_loader, weight_cache
from jaxdict.lm.language_model import LanguageModel
from jaxdict.lm.tokenizer import Tokenizer

Q = gguf.GGMLQuantizationType
TINY = dict(d=64, heads=2, kv=1, hd=32, ffn=128, layers=6)


def _tiny_vocab() -> tuple[list[str], list[float], list[int]]:
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [3, 3, 3, 3] + [6] * 256
    words = ["\u2581the", "\u2581cat", "\u2581sat", "at", "\u2581", "t", "h", "e", "c", "a", "s"]
    pieces += words + ["  "]  # a user-defined whitespace run, stored llama.cpp-style
    types += [1] * len(words) + [4]
    scores = [0.0] * len(pieces)
    scores[260:260 + len(words)] = [-float(i) for i in range(len(words))]
    return pieces, scores, types


def _write_gguf(path, arch="gemma3", qtype=Q.Q8_0):
    """A 6-layer Gemma 3 GGUF; returns the float32 arrays it was written from (out, in)."""
    t = TINY
    rng = np.random.default_rng(0)
    pieces, scores, types = _tiny_vocab()
    V = len(pieces)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(t["layers"])
    w.add_embedding_length(t["d"])
    w.add_feed_forward_length(t["ffn"])
    w.add_head_count(t["heads"])
    w.add_head_count_kv(t["kv"])
    w.add_key_length(t["hd"])
    w.add_value_length(t["hd"])
    w.add_sliding_window(16)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_context_length(1024)
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    source = {}

    def add(name, shape, kind):
        a = rng.normal(size=shape).astype(np.float32) * (0.2 if len(shape) == 2 else 1.0)
        if len(shape) == 1:
            a = 1.0 + 0.1 * a
            w.add_tensor(name, a)
        else:
            data = gguf.quants.quantize(a, kind)
            a = gguf.quants.dequantize(data, kind)
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=kind)
        source[name] = a

    d, H, K, hd, F = t["d"], t["heads"], t["kv"], t["hd"], t["ffn"]
    add("token_embd.weight", (V, d), Q.F16)
    add("output_norm.weight", (d,), None)
    kinds = [qtype, Q.BF16, Q.Q5_0, Q.F16]
    for i in range(t["layers"]):
        p = f"blk.{i}."
        for j, (name, shape) in enumerate([
                ("attn_q.weight", (H * hd, d)), ("attn_k.weight", (K * hd, d)),
                ("attn_v.weight", (K * hd, d)), ("attn_output.weight", (d, H * hd)),
                ("ffn_gate.weight", (F, d)), ("ffn_up.weight", (F, d)),
                ("ffn_down.weight", (d, F))]):
            add(p + name, shape, kinds[(i + j) % len(kinds)])
        for name, n in [("attn_norm.weight", d), ("attn_q_norm.weight", hd),
                        ("attn_k_norm.weight", hd), ("post_attention_norm.weight", d),
                        ("ffn_norm.weight", d), ("post_ffw_norm.weight", d)]:
            add(p + name, (n,), None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return source


def test_small_gguf_config_weights_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDICT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny.gguf"
    source = _write_gguf(path)
    lm = jaxdict.lm.load(str(path))
    c = lm.config
    assert (c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim) == (
        64, 6, 2, 1, 32, 128)
    assert c.sliding_window == 16 and c.vocab_size == 272
    assert c.layer_types == ("sliding_attention",) * 5 + ("full_attention",)
    layer = lm.params["layers"][3]
    np.testing.assert_array_equal(np.asarray(layer["q"]).reshape(64, 64).T,
                                  source["blk.3.attn_q.weight"])
    np.testing.assert_array_equal(np.asarray(layer["down"]).T, source["blk.3.ffn_down.weight"])
    # GGUF norms already hold 1 + w: used as they are
    np.testing.assert_array_equal(np.asarray(layer["k_norm"]), source["blk.3.attn_k_norm.weight"])
    entries = list((tmp_path / "cache" / "lm").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")  # no temporary left over
    assert weight_cache.read_entry(entries[0].name) is not None
    again = jaxdict.lm.load(str(path))  # from the cache
    ids = jnp.asarray([[2, 260, 261, 262]], jnp.int32)
    np.testing.assert_array_equal(np.asarray(again.logits(ids)), np.asarray(lm.logits(ids)))
    assert np.isfinite(np.asarray(lm.logits(ids))).all()
    # BPE merges along pieces present in the vocabulary ("▁t", "he"... are absent here)
    assert lm.tokenizer.decode(lm.tokenizer.encode(" the cat sat")) == " the cat sat"
    assert lm.tokenizer.encode("at  ", add_bos=False) == [263, 271]
    assert lm.tokenizer.id_to_piece(271) == "\u2581\u2581"


def test_unsupported_architecture_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDICT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "llama.gguf"
    _write_gguf(path, arch="llama")
    with pytest.raises(ValueError, match="unsupported GGUF architecture 'llama'"):
        jaxdict.lm.load(str(path))
    assert not (tmp_path / "cache" / "lm").exists() or not any(
        (tmp_path / "cache" / "lm").iterdir())


def test_bad_model_names(tmp_path):
    with pytest.raises(ValueError, match="not a known name"):
        jaxdict.lm.load("gemma3-9000b")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        jaxdict.lm.load(str(tmp_path))
    with pytest.raises(ValueError, match="dtype 'int8' not supported"):
        jaxdict.lm.load("gemma3-270m", dtype="int8")


def test_hf_folder_equals_gguf_weights(tmp_path):
    """Two real layers of the 270M and 4096 vocabulary rows, written as HF safetensors with the
    +1 taken out of the norms; loading the folder must give the GGUF model's logits."""
    config, proto, params = gguf_loader.load_default()
    V, n_layers = 4096, 2
    hf_config = {
        "model_type": "gemma3_text", "vocab_size": V, "hidden_size": 640,
        "num_hidden_layers": n_layers, "num_attention_heads": 4, "num_key_value_heads": 1,
        "head_dim": 256, "intermediate_size": 2048, "sliding_window": 512,
        "layer_types": ["sliding_attention", "full_attention"], "rope_theta": 1e6,
        "rope_local_base_freq": 1e4, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-6,
        "rope_scaling": None, "max_position_embeddings": 32768,
    }
    tensors = {"model.embed_tokens.weight": np.array(params["embed"][:V]),
               "model.norm.weight": np.array(params["final_norm"]) - 1.0}
    d = 640
    for i in range(n_layers):
        lp, p = params["layers"][i], f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": lp["attn_norm"] - 1.0,
            p + "self_attn.q_proj.weight": np.array(lp["q"]).reshape(d, -1).T,
            p + "self_attn.k_proj.weight": np.array(lp["k"]).reshape(d, -1).T,
            p + "self_attn.v_proj.weight": np.array(lp["v"]).reshape(d, -1).T,
            p + "self_attn.q_norm.weight": lp["q_norm"] - 1.0,
            p + "self_attn.k_norm.weight": lp["k_norm"] - 1.0,
            p + "self_attn.o_proj.weight": np.array(lp["o"]).reshape(-1, d).T,
            p + "post_attention_layernorm.weight": lp["post_attn_norm"] - 1.0,
            p + "pre_feedforward_layernorm.weight": lp["ffn_norm"] - 1.0,
            p + "mlp.gate_proj.weight": np.array(lp["gate"]).T,
            p + "mlp.up_proj.weight": np.array(lp["up"]).T,
            p + "mlp.down_proj.weight": np.array(lp["down"]).T,
            p + "post_feedforward_layernorm.weight": lp["post_ffn_norm"] - 1.0,
        })
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    names = sorted(tensors)
    folder = tmp_path / "gemma-3-tiny"
    folder.mkdir()
    save_file({k: tensors[k] for k in names[:10]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: tensors[k] for k in names[10:]}, str(folder / "model-00002-of-00002.safetensors"))
    (folder / "config.json").write_text(json.dumps(hf_config))
    (folder / "tokenizer.model").write_bytes(proto)

    hf = jaxdict.lm.load(str(folder))
    assert hf.config.layer_types == ("sliding_attention", "full_attention")
    from_gguf = LanguageModel(
        name="gguf-cut", config=hf.config, tokenizer=Tokenizer(proto),
        params={"embed": jnp.asarray(params["embed"][:V]),
                "final_norm": jnp.asarray(params["final_norm"]),
                "layers": [{k: jnp.asarray(v) for k, v in params["layers"][i].items()}
                           for i in range(n_layers)]})
    ids = jnp.asarray([[2, 818, 1000, 3000, 4095, 107]], jnp.int32)
    got, want = np.asarray(hf.logits(ids)), np.asarray(from_gguf.logits(ids))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert np.abs(want).max() > 1.0
    assert hf.tokenizer.encode("The capital of France is") == [2, 818, 5279, 529, 7001, 563]
