"""`LanguageModel`: a loaded Gemma 3 with its tokenizer, hooks, edits and KV-cache generation."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdict.lm import model
from jaxdict.lm.config import Gemma3Config
from jaxdict.lm.hooks import HookPoint, parse_hook_point
from jaxdict.lm.tokenizer import Tokenizer

Array = jax.Array
EditFn = Callable[[Array, Any], Array]
Edits = Mapping[str, tuple[EditFn, Any]]
@functools.partial(jax.jit, static_argnames=(
    "config", "n_blocks", "hook_points", "edit_spec", "with_logits"))
def _forward_jit(params, ids, mask, edit_args, *, config, n_blocks, hook_points, edit_spec,
                 with_logits):
    hooks, logits, _ = model.forward(
        params, ids, mask, edit_args, config=config, n_blocks=n_blocks, hook_points=hook_points,
        edit_spec=edit_spec, with_logits=with_logits)
    return hooks, logits


@functools.partial(jax.jit, static_argnames=(
    "config", "edit_spec", "cache_len", "max_new_tokens", "greedy"))
def _generate_jit(params, prompt, prompt_len, edit_args, temperature, key, *, config, edit_spec,
                  cache_len, max_new_tokens, greedy):
    """Prefill the (right-padded) prompt [1, P] into a KV cache, then decode token by token."""
    c = config
    cache = [(jnp.zeros((1, cache_len, c.n_kv_heads, c.head_dim), params["embed"].dtype),) * 2
             for _ in range(c.n_layers)]
    run = functools.partial(model.forward, config=c, n_blocks=c.n_layers, hook_points=(),
                            edit_spec=edit_spec, with_logits=True)
    mask = jnp.arange(prompt.shape[1])[None, :] < prompt_len
    _, logits, cache = run(params, prompt, mask, edit_args, kv_cache=cache,
                           start=jnp.zeros((), jnp.int32))
    last = jax.lax.dynamic_index_in_dim(logits[0], prompt_len - 1, 0, keepdims=False)

    def pick(logits_v, step):
        if greedy:
            return jnp.argmax(logits_v).astype(jnp.int32)
        k = jax.random.fold_in(key, step)
        return jax.random.categorical(k, logits_v / temperature).astype(jnp.int32)

    def body(step, carry):
        cache, token, out = carry
        out = out.at[step].set(token)
        _, logits, cache = run(params, token.reshape(1, 1), jnp.ones((1, 1), bool), edit_args,
                               kv_cache=cache, start=prompt_len + step)
        return cache, pick(logits[0, 0], step + 1), out

    out = jnp.zeros((max_new_tokens,), jnp.int32)
    _, _, out = jax.lax.fori_loop(0, max_new_tokens, body, (cache, pick(last, 0), out))
    return out


def _bucket(n: int, quantum: int = 64) -> int:
    """Round lengths up so that generation compiles once per bucket, not once per length."""
    return -(-n // quantum) * quantum


@dataclasses.dataclass(frozen=True, eq=False)
class LanguageModel:
    """A Gemma 3 text model: `params` (pytree of jax arrays), `config`, `tokenizer`."""

    name: str
    config: Gemma3Config
    tokenizer: Tokenizer
    params: dict[str, Any]

    @property
    def unembed_matrix(self) -> Array:
        """[V, d]: the tied embedding, used as the output layer."""
        return self.params["embed"]

    # -- helpers -------------------------------------------------------------------------------
    def _check_ids(self, ids: Any, mask: Any) -> tuple[Array, Array]:
        ids = jnp.asarray(ids)
        if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"ids must be an integer array [batch, seq], got {ids.dtype} {ids.shape}")
        ids = ids.astype(jnp.int32)
        if mask is None:
            mask = jnp.ones(ids.shape, dtype=bool)
        mask = jnp.asarray(mask)
        if mask.shape != ids.shape or mask.dtype != jnp.bool_:
            raise ValueError(
                f"mask must be bool with the shape of ids {ids.shape}, got {mask.dtype} {mask.shape}")
        return ids, mask

    def _edits(self, edits: Edits | None
               ) -> tuple[tuple[tuple[HookPoint, EditFn], ...], tuple[Any, ...]]:
        """(hook point, fn) pairs in a canonical order (a stable jit key), and their arguments."""
        if not edits:
            return (), ()
        items = sorted(((parse_hook_point(h, self.config.n_layers), fn, args)
                        for h, (fn, args) in edits.items()), key=lambda t: t[0])
        return tuple((point, fn) for point, fn, _ in items), tuple(a for _, _, a in items)

    # -- public API ------------------------------------------------------------------------------
    def logits(self, ids: Any, mask: Any = None, edits: Edits | None = None) -> Array:
        """float32 [B, S, V] for int ids [B, S]; mask bool [B, S], True = real token."""
        ids, mask = self._check_ids(ids, mask)
        spec, args = self._edits(edits)
        _, logits = _forward_jit(self.params, ids, mask, args, config=self.config,
                                 n_blocks=self.config.n_layers, hook_points=(), edit_spec=spec,
                                 with_logits=True)
        return logits

    def activations(self, ids: Any, hooks: str | Sequence[str], mask: Any = None,
                    edits: Edits | None = None) -> Array | dict[str, Array]:
        """[B, S, d] at one hook point, or {hook: [B, S, d]} for a list of them.

        Hooks are `KIND.L` names (jaxdict.lm.hooks: resid_pre, attn_out, resid_mid, mlp_in,
        mlp_out, resid_post); all come from one forward pass, so they are row-aligned. Only the
        blocks up to the deepest requested hook are run. An edit at a requested hook is applied
        before that hook is read (the hook returns the edited value).
        """
        ids, mask = self._check_ids(ids, mask)
        names = [hooks] if isinstance(hooks, str) else list(hooks)
        if not names:
            raise ValueError("activations needs at least one hook, e.g. 'resid_post.9'")
        points = [parse_hook_point(h, self.config.n_layers) for h in names]
        n_blocks = max(p.layer for p in points) + 1
        spec, args = self._edits(edits)
        keep = [i for i, (point, _) in enumerate(spec) if point.layer < n_blocks]
        out, _ = _forward_jit(self.params, ids, mask, tuple(args[i] for i in keep),
                              config=self.config, n_blocks=n_blocks,
                              hook_points=tuple(sorted(set(points))),
                              edit_spec=tuple(spec[i] for i in keep), with_logits=False)
        if isinstance(hooks, str):
            return out[points[0]]
        return {h: out[point] for h, point in zip(names, points)}

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, *,
                 temperature: float = 0.0, seed: int = 0, edits: Edits | None = None
                 ) -> list[int]:
        """New token ids after `prompt_ids` (BOS included by the caller), with a KV cache.

        Greedy when temperature == 0, else sampled at that temperature. The edits apply at every
        position, prompt and generated alike.
        """
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("generate needs a non-empty prompt (start it with BOS)")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if max_new_tokens == 0:
            return []
        P = _bucket(len(prompt))
        cache_len = _bucket(P + max_new_tokens)
        if cache_len > self.config.max_context:
            raise ValueError(f"prompt + new tokens ({len(prompt) + max_new_tokens}) exceed the "
                             f"context length {self.config.max_context}")
        padded = np.full((1, P), self.tokenizer.pad_id, dtype=np.int32)
        padded[0, :len(prompt)] = prompt
        spec, args = self._edits(edits)
        out = _generate_jit(self.params, jnp.asarray(padded), jnp.int32(len(prompt)), args,
                            jnp.float32(max(temperature, 1e-6)), jax.random.key(seed),
                            config=self.config, edit_spec=spec, cache_len=cache_len,
                            max_new_tokens=int(max_new_tokens), greedy=temperature == 0.0)
        return [int(t) for t in np.asarray(out)]
