"""A tiny random Gemma 3 (2 blocks, d_model 16) with the real tokenizer, for steering tests that
check numbers by hand: it runs in milliseconds and has the real model's layout and code path."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdict.lm.config import FULL, SLIDING, Gemma3Config
from jaxdict.lm.language_model import LanguageModel

D_MODEL = 16


@functools.lru_cache(maxsize=None)
def tiny_lm(seed: int = 0, n_layers: int = 2) -> LanguageModel:
    from test_eval import gemma

    tok = gemma().tokenizer
    cfg = Gemma3Config(vocab_size=tok.vocab_size, d_model=D_MODEL, n_layers=n_layers, n_heads=2, n_kv_heads=1,
                       head_dim=8, ffn_dim=32, sliding_window=8, max_context=128,
                       layer_types=tuple(FULL if (i + 1) % 2 == 0 else SLIDING for i in range(n_layers)))
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.3):
        return jnp.asarray(rng.normal(scale=scale, size=shape), jnp.float32)

    d, H, K, hd, f = D_MODEL, 2, 1, 8, 32
    layers = [{"attn_norm": jnp.ones(d), "q": w(d, H, hd), "k": w(d, K, hd), "v": w(d, K, hd),
               "q_norm": jnp.ones(hd), "k_norm": jnp.ones(hd), "o": w(H, hd, d), "post_attn_norm": jnp.ones(d),
               "ffn_norm": jnp.ones(d), "gate": w(d, f), "up": w(d, f), "down": w(f, d),
               "post_ffn_norm": jnp.ones(d)} for _ in range(n_layers)]
    params = {"embed": w(tok.vocab_size, d, scale=1.0), "final_norm": jnp.ones(d), "layers": layers}
    return LanguageModel(name="tiny-gemma", config=cfg, tokenizer=tok, params=jax.tree.map(jnp.asarray, params))
