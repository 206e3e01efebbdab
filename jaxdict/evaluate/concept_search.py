"""Concept search: rank SAE features by how well they separate positive from negative examples.

An example is a text, optionally with the relevant span marked as [[...]]; its score for a feature
is the feature's largest activation over the span's tokens (over every token after BOS when no
span is marked). Per feature:

  auroc          P(score of a positive > score of a negative), ties counting one half
                 (the Mann–Whitney statistic; 0.5 = no separation);
  mean_diff      mean positive score − mean negative score;
  precision_top  among the n highest-scoring examples with a score > 0 (n = number of positives),
                 the fraction that are positive (0 when no example fires).

Features are ranked by AUROC, then by mean_diff.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from jaxdict.sae.inference import SAE

_MARK = re.compile(r"\[\[(.*?)\]\]", re.S)


@dataclasses.dataclass(frozen=True)
class Example:
    text: str
    ids: tuple[int, ...]  # BOS first
    span: tuple[int, ...]  # token positions scored (never 0, BOS)


def make_example(tokenizer, raw: str) -> Example:
    """Tokenise `raw`; a [[marked]] span selects the tokens overlapping it, else every token after BOS."""
    marks = list(_MARK.finditer(raw))
    text = _MARK.sub(lambda m: m.group(1), raw)
    if not text.strip():
        raise ValueError(f"example {raw!r} is empty")
    pieces = tokenizer._sp.encode(text, return_type="proto").pieces
    ids = (tokenizer.bos_id, *(p.id for p in pieces))
    if not marks:
        return Example(text, ids, tuple(range(1, len(ids))))
    # Character spans of the marks in the unmarked text, then the tokens whose bytes overlap them.
    spans, removed = [], 0
    for m in marks:
        start = m.start() - removed
        spans.append((start, start + len(m.group(1))))
        removed += 4
    to_byte = np.concatenate([[0], np.cumsum([len(c.encode()) for c in text])])
    byte_spans = [(to_byte[a], to_byte[b]) for a, b in spans if b > a]
    chosen = tuple(1 + j for j, p in enumerate(pieces)
                   if any(p.begin < hi and p.end > lo for lo, hi in byte_spans))
    if not chosen:
        raise ValueError(f"example {raw!r}: the marked span covers no token")
    return Example(text, ids, chosen)


def span_activations(lm, hook: str, examples: Sequence[Example], batch_size: int = 8) -> list[np.ndarray]:
    """Hook activations [len(span), d] of each example's span tokens."""
    out = []
    for b in range(0, len(examples), batch_size):
        chunk = examples[b:b + batch_size]
        S = -(-max(len(e.ids) for e in chunk) // 16) * 16
        if max(len(e.ids) for e in chunk) > lm.config.max_context:
            raise ValueError(f"an example has more tokens than the context length {lm.config.max_context}")
        ids = np.full((len(chunk), S), lm.tokenizer.pad_id, np.int32)
        mask = np.zeros((len(chunk), S), bool)
        for i, e in enumerate(chunk):
            ids[i, :len(e.ids)] = e.ids
            mask[i, :len(e.ids)] = True
        acts = np.asarray(lm.activations(jnp.asarray(ids), hook, jnp.asarray(mask)), np.float32)
        out.extend(acts[i, list(e.span)] for i, e in enumerate(chunk))
    return out


def example_scores(lm, sae: SAE, examples: Sequence[Example], acts: Sequence[np.ndarray] | None = None
                   ) -> np.ndarray:
    """float32 [n, F]: each feature's max activation over each example's span."""
    if sae.hook is None:
        raise ValueError("the SAE records no hook; load it with hook='resid_post.L'")
    acts = span_activations(lm, sae.hook, examples) if acts is None else acts
    return np.stack([np.asarray(sae.encode(jnp.asarray(a))).max(axis=0) for a in acts]).astype(np.float32)


def auroc(pos: np.ndarray, neg: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """[F]: P(pos > neg) + ½ P(pos = neg) over all positive/negative pairs, per feature."""
    pos, neg = np.asarray(pos, np.float32), np.asarray(neg, np.float32)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"concept search needs positive and negative examples, got {len(pos)} and {len(neg)}")
    out = np.zeros(pos.shape[1], np.float64)
    for a in range(0, pos.shape[1], chunk):
        p, n = pos[:, None, a:a + chunk], neg[None, :, a:a + chunk]
        out[a:a + chunk] = ((p > n).sum((0, 1)) + 0.5 * (p == n).sum((0, 1))) / (len(pos) * len(neg))
    return out


def precision_top(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """[F]: fraction of positives among the len(pos) highest-scoring examples that fire (> 0)."""
    scores = np.concatenate([pos, neg]).astype(np.float32)
    labels = np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg), bool)])
    order = np.argsort(-scores, axis=0, kind="stable")[: len(pos)]  # [n_pos, F]
    top_scores = np.take_along_axis(scores, order, axis=0)
    fired = top_scores > 0
    hits = (labels[order] & fired).sum(0)
    return np.where(fired.sum(0) > 0, hits / np.maximum(fired.sum(0), 1), 0.0)


def rank_features(pos: np.ndarray, neg: np.ndarray, top: int = 20) -> list[dict[str, Any]]:
    """The `top` features by AUROC (then mean_diff), with all three statistics."""
    au = auroc(pos, neg)
    diff = pos.mean(0).astype(np.float64) - neg.mean(0)
    prec = precision_top(pos, neg)
    order = np.lexsort((-diff, -au))[:top]
    return [{"feature": int(i), "auroc": float(au[i]), "mean_diff": float(diff[i]),
             "precision_top": float(prec[i]), "mean_pos": float(pos[:, i].mean()),
             "mean_neg": float(neg[:, i].mean())} for i in order]


def read_examples(path: str | None) -> list[str]:
    """The example texts of a file of one JSON string per line ([] for no file)."""
    from jaxdict.evaluate.json_lines import read_json_lines

    return [] if path is None else [text for _, _, text in read_json_lines(path, str)]


def suite_examples(name: str, tokenizer, max_context: int) -> tuple[list[str], list[str]]:
    """A steering suite's dev prompts as (prompt+[[target]] positives, prompt+[[alternative]] negatives)."""
    from jaxdict.evaluate.steer_suite import load_suite

    dev = load_suite(name, tokenizer, max_context).split("dev")
    return ([p.prompt + "[[" + p.target + "]]" for p in dev], [p.prompt + "[[" + p.alternative + "]]" for p in dev])
