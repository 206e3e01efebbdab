"""Feature steering (Templeton et al. 2024, "Scaling Monosemanticity", feature steering).

At the SAE's hook, x = SAE(x) + err(x). Steering replaces SAE(x) by the reconstruction with the
chosen features clamped to c · max_i (max_i: the feature's largest activation on the corpus
sample) and keeps err(x), at every position after BOS — prompt and generated tokens alike:

    x' = decode(f with f_i := c·max_i) + (x − decode(f)) = x + Σ_i (c·max_i − f_i) · W_dec,i

The right-hand form is the same for a linear decoder and returns x exactly when the clamp equals
the current value (no round-off from decoding twice).

Position 0 (BOS) is left alone by default (DESIGN §4): BOS is an attention sink whose residual is
an outlier the SAE never saw (it is never harvested, and the spliced metrics skip it too); editing
it moves every later token for reasons unrelated to the feature. `include_bos=True` edits it too.

Effects, measured against the unsteered (baseline) continuation of each prompt:
  kl          mean KL(p_baseline ‖ p_steered) of the next-token distributions along the baseline
              text (teacher-forced), over the positions that predict the continuation;
  dlogp       mean change of log Σ_{t ∈ promoted} p(t) at those positions, `promoted` being the
              tokens the features' decoder directions promote most through the unembedding;
  readback    the features' mean activation when the generated text is read back without steering.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdict.evaluate.explorer import logit_effects
from jaxdict.sae.config import SAEConfig
from jaxdict.sae.inference import SAE, encode_raw


def _position_mask(positions: jax.Array | None, include_bos: bool, ndim: int) -> jax.Array | None:
    """[..., 1] float mask of the positions an edit may change (None: all of them)."""
    if positions is None or include_bos:
        return None
    return (positions != 0).astype(jnp.float32).reshape(positions.shape + (1,) * (ndim - positions.ndim))


@functools.lru_cache(maxsize=None)
def clamp_edit(cfg: SAEConfig, include_bos: bool = False):
    """fn(x, (params, idx [n] int32, values [n] float32)[, positions]) -> x with features idx
    clamped to values. Inside the LM the edit receives the positions and leaves position 0 alone
    unless include_bos; called directly on activations (no positions) it edits every row.

    One function object per (SAE config, include_bos), so the LM compiles each edit shape once.
    """

    def clamp(x: jax.Array, args: Any, positions: jax.Array | None = None) -> jax.Array:
        params, idx, values = args
        f = encode_raw(params, x, cfg)
        current = jnp.take(f, idx, axis=-1)  # [..., n]
        rows = jnp.take(params.W_dec, idx, axis=0)  # [n, d]
        delta = jnp.einsum("...n,nd->...d", values - current, rows)
        return _add_outside_bos(x, delta, positions, include_bos)

    clamp.uses_positions = True
    return clamp


@functools.lru_cache(maxsize=None)
def transcoder_clamp_edit(cfg: SAEConfig, reads: str, include_bos: bool = False):
    """The clamp of a transcoder feature: at its target hook (e.g. mlp_out.L) the MLP's output y
    becomes y + Σ_i (value_i − f_i(x)) · W_dec,i, with f the transcoder's latents of its input x
    (hook `reads`, e.g. mlp_in, of the same block). The transcoder's error y − ŷ is kept, as for an SAE."""

    def clamp(y: jax.Array, args: Any, positions: jax.Array | None = None, *, source: jax.Array) -> jax.Array:
        params, idx, values = args
        current = jnp.take(encode_raw(params, source, cfg), idx, axis=-1)
        delta = jnp.einsum("...n,nd->...d", values - current, jnp.take(params.W_dec, idx, axis=0))
        return _add_outside_bos(y, delta, positions, include_bos)

    clamp.uses_positions = True
    clamp.reads = reads
    return clamp


def _add_outside_bos(x: jax.Array, delta: jax.Array, positions: jax.Array | None,
                     include_bos: bool) -> jax.Array:
    """x + delta in float32, with delta zeroed at position 0 unless include_bos."""
    keep = _position_mask(positions, include_bos, x.ndim)
    if keep is not None:
        delta = delta * keep
    return (x.astype(jnp.float32) + delta).astype(x.dtype)


@functools.lru_cache(maxsize=None)
def add_vector_edit(include_bos: bool = False):
    """fn(x, vector [d][, positions]) -> x + vector at every position (position 0 excluded
    unless include_bos): the edit of DiffMean and random-direction steering."""

    def add(x: jax.Array, vector: Any, positions: jax.Array | None = None) -> jax.Array:
        delta = jnp.broadcast_to(jnp.asarray(vector, jnp.float32), x.shape)
        return _add_outside_bos(x, delta, positions, include_bos)

    add.uses_positions = True
    return add


def steering_edit(sae: SAE, features: Sequence[int], values: Sequence[float],
                  include_bos: bool = False) -> dict[str, Any]:
    """The LM `edits` mapping that clamps `features` to absolute `values` at the SAE's hook, or at a
    transcoder's target hook (position 0 untouched unless include_bos)."""
    if sae.hook is None:
        raise ValueError("the SAE records no hook; load it with hook='resid_post.L'")
    if sae.cfg.is_transcoder and sae.output_hook is None:
        raise ValueError(f"transcoder {sae.source} records no target hook (e.g. mlp_out.9) to steer at")
    idx = jnp.asarray([sae.check_feature(i) for i in features], jnp.int32)
    vals = jnp.asarray(np.asarray(values, np.float32).reshape(-1))
    if vals.shape != idx.shape:
        raise ValueError(f"{len(features)} features but {vals.shape[0]} clamp values")
    if sae.cfg.is_transcoder:
        reads = sae.hook.rsplit(".", 1)[0]
        return {sae.output_hook: (transcoder_clamp_edit(sae.cfg, reads, bool(include_bos)), (sae.params, idx, vals))}
    return {sae.hook: (clamp_edit(sae.cfg, bool(include_bos)), (sae.params, idx, vals))}


@jax.jit
def _compare(base_logits, steered_logits, positions, promoted):
    lp_b = jax.nn.log_softmax(base_logits[0].astype(jnp.float32), axis=-1)[positions]
    lp_s = jax.nn.log_softmax(steered_logits[0].astype(jnp.float32), axis=-1)[positions]
    kl = jnp.sum(jnp.exp(lp_b) * (lp_b - lp_s), axis=-1)
    mass_b = jax.nn.logsumexp(lp_b[:, promoted], axis=-1)
    mass_s = jax.nn.logsumexp(lp_s[:, promoted], axis=-1)
    return jnp.mean(kl), jnp.mean(mass_s - mass_b)


def _readback(lm, sae: SAE, ids: list[int], start: int, features: Sequence[int]) -> list[float]:
    """Mean activation of each feature over tokens ids[start:] when the text is read unsteered."""
    if len(ids) <= start:
        return [0.0 for _ in features]
    acts = lm.activations(jnp.asarray([ids], jnp.int32), sae.hook)[0, start:]
    f = np.asarray(sae.encode(acts))
    return [float(f[:, i].mean()) for i in features]


def check_prompt(lm, ids: Sequence[int], max_new_tokens: int) -> None:
    total = len(ids) + max_new_tokens
    if total > lm.config.max_context:
        raise ValueError(f"prompt of {len(ids)} tokens + {max_new_tokens} new tokens = {total} exceeds "
                         f"the context length {lm.config.max_context}; shorten the prompt or --max-new-tokens")


def steer_prompt(lm, sae: SAE, prompt: str, features: Sequence[int], strengths: Sequence[float],
                 max_new_tokens: int = 40, temperature: float = 0.0, seed: int = 0, n_promoted: int = 10,
                 include_bos: bool = False) -> dict[str, Any]:
    """Baseline and steered continuations of one prompt for every strength c, with their effects."""
    if sae.max_activations is None:
        raise ValueError("the SAE has no max activations; run `jaxdict features` and pass its "
                         "max_activations.npy (steering clamps to c × max activation)")
    features = [sae.check_feature(i) for i in features]
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    sae.check_compatible(lm.name, None, "language model")
    ids = lm.tokenizer.encode(prompt)
    check_prompt(lm, ids, max_new_tokens)
    tok = lm.tokenizer
    promoted_ids = np.unique(logit_effects(sae, lm, features, n_promoted)[0].reshape(-1))
    baseline = lm.generate(ids, max_new_tokens, temperature=temperature, seed=seed)
    base_seq = jnp.asarray([ids + baseline], jnp.int32)
    base_logits = lm.logits(base_seq)
    # Positions len(ids)-1 .. end-1 predict the continuation tokens.
    positions = jnp.arange(len(ids) - 1, len(ids) + len(baseline) - 1)
    maxes = np.asarray(sae.max_activations, np.float32)[features]
    runs = []
    for c in strengths:
        values = np.float32(c) * maxes
        edit = steering_edit(sae, features, values, include_bos)
        new = lm.generate(ids, max_new_tokens, temperature=temperature, seed=seed, edits=edit)
        kl, dlogp = jax.device_get(_compare(base_logits, lm.logits(base_seq, edits=edit), positions,
                                            jnp.asarray(promoted_ids, jnp.int32)))
        runs.append({"strength": float(c), "clamp_values": [float(v) for v in values],
                     "text": tok.decode(new), "ids": new, "kl": float(kl), "dlogp_promoted": float(dlogp),
                     "readback": _readback(lm, sae, ids + new, len(ids), features)})
    return {"prompt": prompt, "features": features, "max_activations": [float(m) for m in maxes],
            "include_bos": bool(include_bos),
            "promoted_tokens": [tok.id_to_piece(int(t)) for t in promoted_ids],
            "baseline": {"text": tok.decode(baseline), "ids": baseline,
                         "readback": _readback(lm, sae, ids + baseline, len(ids), features)},
            "steered": runs}


def load_for_steering(run: str, step: int | None, max_activations: str | None, model: str | None,
                      features: Sequence[int] = ()):
    """(SAE, language model) to steer with: the SAE with its max activations (from `max_activations`,
    a .npy file or a `jaxdict features` folder, else stored with the SAE), `features` checked to be
    its own, and the model `model` or the SAE's, checked against the one it was trained on."""
    from pathlib import Path

    import jaxdict.lm
    from jaxdict.evaluate.heldout import resolve_model
    from jaxdict.sae.io import load_sae

    sae = load_sae(run, step)
    for i in features:
        sae.check_feature(i)
    if max_activations is not None:
        path = Path(max_activations)
        path = path / "max_activations.npy" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"no max activations at {path} (run `jaxdict features RUN --out DIR` first)")
        sae = sae.with_max_activations(np.load(path))
    if sae.max_activations is None:
        raise ValueError("no max activations known for this SAE: run `jaxdict features RUN --out DIR` and "
                         "pass --max-activations DIR")
    return sae, jaxdict.lm.load(resolve_model(sae, model))
