"""What steer-eval measures, each a plain function of the LM and an `edits` mapping.

- completion log P: Σ over a completion's tokens of log p(token | everything before it);
- the cost: mean KL(p_unsteered ‖ p_steered) over the positions of a fixed neutral text (every
  position after BOS: the positions every method edits; steering never edits position 0);
- greedy generation (batched, one full forward per new token) and the perplexity of a steered
  continuation under the unsteered model;
- matched-KL interpolation of a behaviour-vs-KL curve.

Logits are unembedded only at the positions that are read, since Gemma 3's 262k-token unembedding
costs more than the rest of the 270M model per position.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdict.evaluate.spliced import pad_windows
from jaxdict.lm import model as lm_model


# Sequence lengths are padded to a multiple of this (fewer compiles); steering prompts are short,
# so a finer bucket than the 32 of evaluation windows pads less.
_PAD_QUANTUM = 16


def final_hidden(lm, ids: np.ndarray, mask: np.ndarray, edits) -> jax.Array:
    """The last block's output [B, S, d] (before the final norm), with `edits` applied."""
    return lm.activations(jnp.asarray(ids), f"resid_post.{lm.config.n_layers - 1}", jnp.asarray(mask), edits=edits)


@functools.partial(jax.jit, static_argnames=("config",))
def _log_softmax_at(params, hidden_rows, *, config):
    """log p over the vocabulary [N, V] for hidden rows [N, d]."""
    logits = lm_model.unembed(params, hidden_rows[None], config)[0]
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def _select(hidden: jax.Array, rows: np.ndarray, cols: np.ndarray) -> jax.Array:
    return hidden[jnp.asarray(rows), jnp.asarray(cols)]


def completion_logprobs(lm, contexts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                        edits=None, batch_size: int = 8) -> np.ndarray:
    """float64 [N]: Σ_j log p(completion_j | context, completion_<j) for each pair."""
    out = np.zeros(len(contexts), np.float64)
    for b in range(0, len(contexts), batch_size):
        ctx, comp = contexts[b:b + batch_size], completions[b:b + batch_size]
        ids, mask = pad_windows([list(c) + list(t) for c, t in zip(ctx, comp)], lm.tokenizer.pad_id, _PAD_QUANTUM)
        hidden = final_hidden(lm, ids, mask, edits)
        rows, cols, targets, owner = [], [], [], []
        for i, (c, t) in enumerate(zip(ctx, comp)):
            for j in range(len(t)):
                rows.append(i)
                cols.append(len(c) + j - 1)  # the position that predicts completion token j
                targets.append(t[j])
                owner.append(i)
        lp = _log_softmax_at(lm.params, _select(hidden, np.asarray(rows), np.asarray(cols)), config=lm.config)
        picked = np.asarray(jnp.take_along_axis(lp, jnp.asarray(targets)[:, None], axis=1)[:, 0], np.float64)
        np.add.at(out[b:b + batch_size], np.asarray(owner), picked)
    return out


def neutral_kl(lm, neutral_ids: Sequence[int], edits=None, prefix_ids: Sequence[int] = ()) -> float:
    """Mean over positions 1..S-1 of the neutral text [BOS, t_1..t_{S-1}] of KL(p_unsteered ‖ p_steered).

    With `prefix_ids` (the prompting baseline) the steered run reads [BOS, prefix, t_1..] and is
    compared at the positions of the same neutral tokens.
    """
    neutral_ids = list(neutral_ids)
    S = len(neutral_ids)
    ids, mask = pad_windows([neutral_ids], lm.tokenizer.pad_id, _PAD_QUANTUM)
    base = _log_softmax_at(lm.params, final_hidden(lm, ids, mask, None)[0, 1:S], config=lm.config)
    steered_row = neutral_ids[:1] + list(prefix_ids) + neutral_ids[1:]
    ids, mask = pad_windows([steered_row], lm.tokenizer.pad_id, _PAD_QUANTUM)
    off = len(prefix_ids)
    steered = _log_softmax_at(lm.params, final_hidden(lm, ids, mask, edits)[0, 1 + off:S + off], config=lm.config)
    kl = jnp.sum(jnp.exp(base) * (base - steered), axis=-1)
    return float(jnp.mean(kl))


def greedy_generate(lm, prompts: Sequence[Sequence[int]], max_new_tokens: int, edits=None,
                    batch_size: int = 8) -> list[list[int]]:
    """Greedy continuations, the edits applied at every position (the LM's rule: BOS aside)."""
    out: list[list[int]] = []
    for b in range(0, len(prompts), batch_size):
        seqs = [list(p) for p in prompts[b:b + batch_size]]
        new: list[list[int]] = [[] for _ in seqs]
        for _ in range(max_new_tokens):
            ids, mask = pad_windows(seqs, lm.tokenizer.pad_id, _PAD_QUANTUM)
            hidden = final_hidden(lm, ids, mask, edits)
            last = _select(hidden, np.arange(len(seqs)), np.asarray([len(s) - 1 for s in seqs]))
            nxt = np.asarray(jnp.argmax(_log_softmax_at(lm.params, last, config=lm.config), axis=-1))
            for s, n, t in zip(seqs, new, nxt):
                s.append(int(t))
                n.append(int(t))
        out.extend(new)
    return out


def perplexity(lm, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> float:
    """exp(mean NLL) of the continuations' tokens under the unsteered LM, pooled over prompts."""
    n = sum(len(c) for c in continuations)
    if n == 0:
        return float("nan")
    return math.exp(-float(np.sum(completion_logprobs(lm, prompts, continuations))) / n)


def interpolate_at_kl(points: Sequence[tuple[float, float]], budget: float) -> float | None:
    """Behaviour at KL = budget on the piecewise-linear curve through (0, 0) (unsteered) and the
    (kl, behaviour) points sorted by KL; None when the curve never reaches that budget."""
    if budget < 0:
        raise ValueError(f"KL budget must be >= 0, got {budget}")
    pts = sorted([(0.0, 0.0)] + [(float(k), float(b)) for k, b in points if np.isfinite(k) and np.isfinite(b)])
    if budget > pts[-1][0]:
        return None
    for (k0, b0), (k1, b1) in zip(pts, pts[1:]):
        if k0 <= budget <= k1:
            return b0 if k1 == k0 else b0 + (b1 - b0) * (budget - k0) / (k1 - k0)
    return pts[0][1]


def behaviour(lm, prompts, edits=None, prefix_ids: Sequence[int] = ()) -> np.ndarray:
    """log P(target) − log P(alternative) per prompt [N] (with `prefix_ids` after BOS if given)."""
    ctx = [list(p.prompt_ids[:1]) + list(prefix_ids) + list(p.prompt_ids[1:]) for p in prompts]
    both = completion_logprobs(lm, ctx + ctx, [p.target_ids for p in prompts] + [p.alternative_ids for p in prompts],
                               edits)
    return both[:len(prompts)] - both[len(prompts):]


def summary_of(shifts: np.ndarray, kinds: Sequence[str], direction: float = 1.0) -> dict[str, Any]:
    """Per-point behaviour summary: mean/median shift, prompts moving the wrong way, kinds moved.

    A kind moves the right way when its mean shift has the intended sign and more than half of its
    prompts do too; `direction` is +1 toward the target, −1 for suppression.
    """
    s = np.asarray(shifts, np.float64) * direction
    per_kind = {}
    for k in sorted(set(kinds)):
        v = s[np.asarray([x == k for x in kinds])]
        per_kind[k] = {"mean_shift": float(v.mean() * direction), "moved": bool(v.mean() > 0 and np.mean(v > 0) > 0.5)}
    return {"mean_shift": float(np.mean(s) * direction), "median_shift": float(np.median(s) * direction),
            "wrong_way": int(np.sum(s < 0)), "n": int(len(s)),
            "kinds_moved": int(sum(v["moved"] for v in per_kind.values())), "n_kinds": len(per_kind),
            "per_kind": per_kind}
