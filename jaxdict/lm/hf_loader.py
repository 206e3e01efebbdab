"""Load a local Hugging Face Gemma 3 folder: `config.json`, `*.safetensors`, `tokenizer.model`.

HF checkpoints store RMSNorm weights as plain w (their code computes x * (1 + w)), unlike GGUF
files, whose norm weights already include the +1; hence `norm_offset=1` here.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxdict.lm import weight_cache
from jaxdict.lm.config import Gemma3Config, config_from_hf
from jaxdict.lm.gguf_loader import params_from_named

# GGUF tensor name suffix -> HF name suffix inside `model.layers.{i}.`
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
}
# The multimodal wrapper (Gemma3ForConditionalGeneration) nests the text model.
_PREFIXES = ("model.", "language_model.model.", "model.language_model.")


def hf_name(gguf_name: str) -> str:
    """HF tensor name (without the `model.` prefix) of a GGUF tensor name."""
    if gguf_name == "token_embd.weight":
        return "embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "norm.weight"
    _, i, rest = gguf_name.split(".", 2)
    return f"layers.{i}.{_LAYER_NAMES[rest]}"


def load_hf_folder(folder: str | Path) -> tuple[Gemma3Config, bytes, weight_cache.Params]:
    from safetensors.numpy import load_file

    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} is not a Hugging Face model folder: no config.json")
    config = config_from_hf(json.loads(cfg_path.read_text()))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} has no *.safetensors weight files")
    tok_path = folder / "tokenizer.model"
    if not tok_path.is_file():
        raise FileNotFoundError(f"{folder} has no tokenizer.model (SentencePiece) file")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        for name, value in load_file(str(f)).items():
            for prefix in _PREFIXES:
                if name.startswith(prefix):
                    tensors[name[len(prefix):]] = value
                    break

    def get(gguf_name: str) -> np.ndarray:
        name = hf_name(gguf_name)
        if name not in tensors:
            raise ValueError(f"{folder}: no tensor 'model.{name}' in the safetensors files")
        return np.asarray(tensors[name], dtype=np.float32)

    params = params_from_named(get, config, norm_offset=1.0)
    return config, tok_path.read_bytes(), params
