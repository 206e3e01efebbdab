"""Gemma 3 text-model configuration, read from GGUF metadata or a Hugging Face config.json.

One frozen dataclass covers every member of the family (270M, 1B, 4B, 12B, 27B): they share the
architecture and differ only in these numbers.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

SLIDING = "sliding_attention"
FULL = "full_attention"

# Gemma 3 interleaves five local (sliding-window) layers with one global layer: layer i is global
# when (i + 1) % 6 == 0 (Gemma 3 technical report §2.1; llama.cpp `set_swa_pattern(6)`).
_GEMMA3_SLIDING_PATTERN = 6
# The RoPE base of local layers is 10k for every Gemma 3 size; the GGUF does not store it
# (llama.cpp hard-codes `rope_freq_base_train_swa = 10000.0f` for LLM_ARCH_GEMMA3).
_GEMMA3_LOCAL_ROPE_BASE = 10_000.0


@dataclasses.dataclass(frozen=True)
class Gemma3Config:
    """Shape and hyper-parameters of a Gemma 3 text model.

    `layer_types[i]` is "sliding_attention" (local: RoPE base `local_rope_base`, keys at most
    `sliding_window - 1` positions back) or "full_attention" (global: RoPE base `global_rope_base`,
    positions divided by `global_rope_scale`).
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    sliding_window: int
    layer_types: tuple[str, ...]
    local_rope_base: float = _GEMMA3_LOCAL_ROPE_BASE
    global_rope_base: float = 1_000_000.0
    global_rope_scale: float = 1.0
    query_pre_attn_scalar: float = 256.0
    rms_norm_eps: float = 1e-6
    max_context: int = 32768

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                     "ffn_dim", "sliding_window", "max_context"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Gemma3Config.{name} must be a positive int, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if len(self.layer_types) != self.n_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries, expected n_layers={self.n_layers}")
        bad = [t for t in self.layer_types if t not in (SLIDING, FULL)]
        if bad:
            raise ValueError(f"unknown layer type {bad[0]!r}; valid: {SLIDING!r}, {FULL!r}")

    @property
    def embed_scale(self) -> float:
        """Gemma multiplies token embeddings by sqrt(d_model) (llama.cpp: `sqrtf(n_embd)`)."""
        return math.sqrt(self.d_model)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Gemma3Config":
        d = dict(d)
        d["layer_types"] = tuple(d["layer_types"])
        return cls(**d)


def default_layer_types(n_layers: int) -> tuple[str, ...]:
    return tuple(FULL if (i + 1) % _GEMMA3_SLIDING_PATTERN == 0 else SLIDING
                 for i in range(n_layers))


def config_from_gguf_metadata(meta: Mapping[str, Any], vocab_size: int) -> Gemma3Config:
    """Build the config from GGUF key/values (`gemma3.*`); `meta` maps key -> python value."""
    arch = meta.get("general.architecture")
    if arch != "gemma3":
        raise ValueError(
            f"unsupported GGUF architecture {arch!r}: jaxdict.lm implements only 'gemma3' "
            "(Gemma 3 text models)")

    def need(key: str) -> Any:
        full = f"gemma3.{key}"
        if full not in meta:
            raise ValueError(f"GGUF metadata lacks {full!r}, which a Gemma 3 file must have")
        return meta[full]

    n_layers = int(need("block_count"))
    d_model = int(need("embedding_length"))
    n_heads = int(need("attention.head_count"))
    head_dim = int(need("attention.key_length"))
    scale_type = meta.get("gemma3.rope.scaling.type", "none")
    scale = float(meta.get("gemma3.rope.scaling.factor", 1.0)) if scale_type == "linear" else 1.0
    if scale_type not in ("none", "linear"):
        raise ValueError(f"unsupported gemma3.rope.scaling.type {scale_type!r}; valid: none, linear")
    # Gemma 3 27B scales queries by (d_model / n_heads)^-0.5 instead of head_dim^-0.5
    # (HF config `query_pre_attn_scalar` = 168; llama.cpp special-cases LLM_TYPE_27B the same way).
    query_scalar = d_model / n_heads if n_layers == 62 else float(head_dim)
    return Gemma3Config(
        vocab_size=vocab_size,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(need("attention.head_count_kv")),
        head_dim=head_dim,
        ffn_dim=int(need("feed_forward_length")),
        sliding_window=int(need("attention.sliding_window")),
        layer_types=default_layer_types(n_layers),
        global_rope_base=float(meta.get("gemma3.rope.freq_base", 1_000_000.0)),
        global_rope_scale=scale,
        query_pre_attn_scalar=query_scalar,
        rms_norm_eps=float(meta.get("gemma3.attention.layer_norm_rms_epsilon", 1e-6)),
        max_context=int(meta.get("gemma3.context_length", 32768)),
    )


def config_from_hf(cfg: Mapping[str, Any]) -> Gemma3Config:
    """Build the config from a Hugging Face Gemma 3 `config.json` (text config or its wrapper)."""
    if "text_config" in cfg:  # the multimodal Gemma3ForConditionalGeneration wraps the text model
        cfg = cfg["text_config"]
    model_type = cfg.get("model_type")
    if model_type not in ("gemma3_text", "gemma3"):
        raise ValueError(
            f"unsupported Hugging Face model_type {model_type!r}; valid: 'gemma3_text', 'gemma3'")
    n_layers = int(cfg["num_hidden_layers"])
    if "layer_types" in cfg and cfg["layer_types"]:
        layer_types = tuple(cfg["layer_types"])
    else:
        pattern = int(cfg.get("sliding_window_pattern", _GEMMA3_SLIDING_PATTERN))
        layer_types = tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n_layers))
    scaling = cfg.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ("default", "linear"):
        raise ValueError(f"unsupported rope_scaling type {rope_type!r}; valid: default, linear")
    return Gemma3Config(
        vocab_size=int(cfg["vocab_size"]),
        d_model=int(cfg["hidden_size"]),
        n_layers=n_layers,
        n_heads=int(cfg["num_attention_heads"]),
        n_kv_heads=int(cfg["num_key_value_heads"]),
        head_dim=int(cfg.get("head_dim", 256)),
        ffn_dim=int(cfg["intermediate_size"]),
        sliding_window=int(cfg.get("sliding_window", 512)),
        layer_types=layer_types,
        local_rope_base=float(cfg.get("rope_local_base_freq", _GEMMA3_LOCAL_ROPE_BASE)),
        global_rope_base=float(cfg.get("rope_theta", 1_000_000.0)),
        global_rope_scale=float(scaling.get("factor", 1.0)) if rope_type == "linear" else 1.0,
        query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar", cfg.get("head_dim", 256))),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        max_context=int(cfg.get("max_position_embeddings", 32768)),
    )


def _published(vocab: int, d: int, layers: int, heads: int, kv: int, head_dim: int, ffn: int, window: int,
               rope_scale: float, query_scalar: float, context: int) -> Gemma3Config:
    return Gemma3Config(vocab_size=vocab, d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=kv,
                        head_dim=head_dim, ffn_dim=ffn, sliding_window=window,
                        layer_types=default_layer_types(layers), global_rope_scale=rope_scale,
                        query_pre_attn_scalar=query_scalar, max_context=context)


# The Gemma 3 family's published shapes (Hugging Face `google/gemma-3-{size}-pt` config.json,
# text_config for the multimodal 4B-27B; Gemma 3 technical report, Table 1), for planning pods
# (jaxdict.plan.harvest_plan) without downloading weights. 4B-27B use linear RoPE scaling ×8 on
# global layers and a 1024-token window; 27B scales queries by (d_model / n_heads)^-0.5 = 168^-0.5.
GEMMA3_PUBLISHED: dict[str, Gemma3Config] = {
    "gemma3-270m": _published(262144, 640, 18, 4, 1, 256, 2048, 512, 1.0, 256.0, 32768),
    "gemma3-1b": _published(262144, 1152, 26, 4, 1, 256, 6912, 512, 1.0, 256.0, 32768),
    "gemma3-4b": _published(262208, 2560, 34, 8, 4, 256, 10240, 1024, 8.0, 256.0, 131072),
    "gemma3-12b": _published(262208, 3840, 48, 16, 8, 256, 15360, 1024, 8.0, 256.0, 131072),
    "gemma3-27b": _published(262208, 5376, 62, 32, 16, 128, 21504, 1024, 8.0, 168.0, 131072),
}
