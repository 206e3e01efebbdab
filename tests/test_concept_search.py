"""Concept search statistics against hand computations, and marked spans."""
from __future__ import annotations

import numpy as np
import pytest

from jaxdict.evaluate.concept_search import auroc, make_example, precision_top, rank_features
from tiny_lm import tiny_lm


def test_auroc_with_ties_by_hand():
    pos = np.array([[3.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    neg = np.array([[1.0, 0.0], [0.0, 0.0]])
    # Feature 0: pairs 3>1, 3>0, 1=1, 1>0, 0<1, 0=0 -> (3 + 0.5*2) / 6.
    # Feature 1: 0=0 four times, 2>0 twice -> (2 + 0.5*4) / 6.
    np.testing.assert_allclose(auroc(pos, neg), [4 / 6, 4 / 6])
    np.testing.assert_allclose(auroc(pos[:2], neg), [3.5 / 4, 0.5])
    with pytest.raises(ValueError, match="positive and negative"):
        auroc(pos[:0], neg)


def test_precision_top_and_ranking_by_hand():
    pos = np.array([[5.0, 0.0, 1.0], [4.0, 0.0, 0.0]])
    neg = np.array([[6.0, 0.0, 2.0], [0.0, 0.0, 3.0], [1.0, 1.0, 0.0]])
    # Top 2 firing examples: f0 -> 6 (neg), 5 (pos) = 0.5; f1 -> only 1 (neg) fires = 0; f2 -> 3, 2 (both neg) = 0.
    np.testing.assert_allclose(precision_top(pos, neg), [0.5, 0.0, 0.0])
    ranked = rank_features(pos, neg, top=3)
    assert [r["feature"] for r in ranked] == [0, 1, 2]  # AUROC 4/6, then 2/6 (f1) vs 1.5/6 (f2)
    assert ranked[0]["mean_diff"] == pytest.approx(4.5 - 7 / 3)


def test_marked_span_selects_tokens():
    tok = tiny_lm().tokenizer
    e = make_example(tok, "requests.get(url, verify=[[False]])")
    assert e.text == "requests.get(url, verify=False)"
    assert "".join(tok.id_to_piece(e.ids[i]) for i in e.span) == "False"
    whole = make_example(tok, "plain text here")
    assert whole.span == tuple(range(1, len(whole.ids)))
    with pytest.raises(ValueError, match="empty"):
        make_example(tok, "[[ ]]")


def test_steer_eval_and_find_import_no_training_code():
    """DESIGN §2: the evaluator and steering load checkpoints without optax, grain or jaxdict.train."""
    import os
    import subprocess
    import sys

    code = ("import sys, jaxdict.evaluate.steer_eval, jaxdict.evaluate.steer_eval_report, "
            "jaxdict.evaluate.concept_search, jaxdict.evaluate.steer_suite, jaxdict.commands.steer_eval, "
            "jaxdict.commands.find, jaxdict.commands.steer\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('optax', 'grain') "
            "or m.startswith('jaxdict.train') or m.startswith('jaxdict.data'))\n"
            "print(bad); assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
