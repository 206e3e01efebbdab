"""Write a jaxdict Gemma 3 model as a Hugging Face folder (`config.json`, `model.safetensors`,
`tokenizer.model`): what transformers' Gemma3ForCausalLM, TransformerLens and circuit-tracer load.

The inverse of jaxdict.lm.hf_loader: HF stores each RMSNorm weight as plain w (its code multiplies
by 1 + w), so 1 is subtracted from our full multipliers; projections go back to nn.Linear's
[out, in]. Written from the embedded GGUF, the weights are its dequantised Q4_K_M values, so the
folder is *that* model (not Google's bf16 release), and both frameworks then run the same weights.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxdict.lm.config import Gemma3Config
from jaxdict.lm.hf_loader import _LAYER_NAMES


def hf_config(config: Gemma3Config) -> dict[str, Any]:
    """A Gemma3ForCausalLM (model_type gemma3_text) config.json for this config."""
    c = config
    return {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads, "head_dim": c.head_dim,
        "intermediate_size": c.ffn_dim, "sliding_window": c.sliding_window,
        "layer_types": list(c.layer_types), "rope_local_base_freq": c.local_rope_base,
        "rope_theta": c.global_rope_base,
        "rope_scaling": None if c.global_rope_scale == 1.0 else {"rope_type": "linear",
                                                                 "factor": c.global_rope_scale},
        # transformers 5 validates this field as an int.
        "query_pre_attn_scalar": (int(c.query_pre_attn_scalar) if float(c.query_pre_attn_scalar).is_integer()
                                  else c.query_pre_attn_scalar), "rms_norm_eps": c.rms_norm_eps,
        "max_position_embeddings": c.max_context, "hidden_activation": "gelu_pytorch_tanh",
        "attn_logit_softcapping": None, "final_logit_softcapping": None, "attention_bias": False,
        "attention_dropout": 0.0, "tie_word_embeddings": True, "torch_dtype": "float32",
        "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
    }


def hf_tensors(params: dict[str, Any], config: Gemma3Config) -> dict[str, np.ndarray]:
    """HF tensor names -> float32 arrays, from jaxdict.lm params (norm weights = 1 + w)."""
    c = config
    d, H, K, hd = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim

    def f32(a: Any) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(a, np.float32))

    def norm(a: Any) -> np.ndarray:
        return f32(np.asarray(a, np.float32) - np.float32(1.0))

    inverse = {v: k for k, v in _LAYER_NAMES.items()}  # HF suffix -> GGUF suffix, for the checks below
    out = {"model.embed_tokens.weight": f32(params["embed"]), "model.norm.weight": norm(params["final_norm"])}
    for i, layer in enumerate(params["layers"]):
        p = f"model.layers.{i}."
        tensors = {
            "input_layernorm.weight": norm(layer["attn_norm"]),
            "self_attn.q_proj.weight": f32(np.asarray(layer["q"]).reshape(d, H * hd).T),
            "self_attn.k_proj.weight": f32(np.asarray(layer["k"]).reshape(d, K * hd).T),
            "self_attn.v_proj.weight": f32(np.asarray(layer["v"]).reshape(d, K * hd).T),
            "self_attn.q_norm.weight": norm(layer["q_norm"]),
            "self_attn.k_norm.weight": norm(layer["k_norm"]),
            "self_attn.o_proj.weight": f32(np.asarray(layer["o"]).reshape(H * hd, d).T),
            "post_attention_layernorm.weight": norm(layer["post_attn_norm"]),
            "pre_feedforward_layernorm.weight": norm(layer["ffn_norm"]),
            "mlp.gate_proj.weight": f32(np.asarray(layer["gate"]).T),
            "mlp.up_proj.weight": f32(np.asarray(layer["up"]).T),
            "mlp.down_proj.weight": f32(np.asarray(layer["down"]).T),
            "post_feedforward_layernorm.weight": norm(layer["post_ffn_norm"]),
        }
        assert set(tensors) == set(inverse), "every HF tensor hf_loader reads is written"
        out.update({p + k: v for k, v in tensors.items()})
    return out


def write_hf_folder(lm: Any, out_dir: str | Path) -> Path:
    """Write `lm` (a jaxdict.lm.LanguageModel) as a Hugging Face Gemma 3 folder; returns it."""
    from safetensors.numpy import save_file

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    save_file(hf_tensors(lm.params, lm.config), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(lm.config), indent=1))
    (out / "tokenizer.model").write_bytes(lm.tokenizer.model_proto)
    # Without this file transformers' GemmaTokenizer adds no <bos> and tokenizes differently from
    # jaxdict's; with it, the ids are equal (tests/test_circuit_tracer.py checks on code and prose).
    piece = lm.tokenizer.id_to_piece
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "pad_token": piece(0), "eos_token": piece(1), "bos_token": piece(2), "unk_token": piece(3)}, indent=1))
    return out
