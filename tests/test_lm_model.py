"""Gemma 3 270M forward pass against llama.cpp, sliding window, edits, padding and generation."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdict.lm
from jaxdict.lm.language_model import LanguageModel, _forward_jit

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / \
    "gemma3_270m_reference_logits.npz"
PROMPTS = {"france": "The capital of France is",
           "bridge": "The Golden Gate Bridge is located in"}


@pytest.fixture(scope="module")
def lm() -> LanguageModel:
    return jaxdict.lm.load("gemma3-270m")


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_matches_llama_cpp_reference(lm, name):
    ref = np.load(REFERENCE)
    ids = lm.tokenizer.encode(PROMPTS[name])
    np.testing.assert_array_equal(ids, ref[f"{name}/ids"])
    logits = np.asarray(lm.logits(jnp.asarray([ids], jnp.int32))[0])
    top_ids, top_logits = ref[f"{name}/top_ids"], ref[f"{name}/top_logits"]
    # every position: the reference's top-64 logits within 0.1
    np.testing.assert_allclose(np.take_along_axis(logits, top_ids, axis=1), top_logits, atol=0.1)
    # last position: all 262144 logits within 0.1, identical top-5
    np.testing.assert_allclose(logits[-1], ref[f"{name}/last_logits"], atol=0.1)
    np.testing.assert_array_equal(np.argsort(-logits[-1])[:5],
                                  np.argsort(-ref[f"{name}/last_logits"])[:5])


def test_golden_gate_greedy_continuation(lm):
    ids = lm.tokenizer.encode("The Golden Gate Bridge is located in")
    new = lm.generate(ids, 4)
    assert lm.tokenizer.decode(new).startswith(" San Francisco"), lm.tokenizer.decode(new)


def test_sliding_window_honoured_beyond_512_tokens(lm):
    rng = np.random.default_rng(0)
    S = 600
    ids = rng.integers(300, 200_000, size=(1, S)).astype(np.int32)
    ids[0, 0] = lm.tokenizer.bos_id
    other = ids.copy()
    other[0, 1] = 1000 if ids[0, 1] != 1000 else 1001  # change the token at position 1
    a = np.asarray(lm.activations(jnp.asarray(ids), "resid_post.0"))
    b = np.asarray(lm.activations(jnp.asarray(other), "resid_post.0"))
    window = lm.config.sliding_window
    # layer 0 is local: position p sees keys p-511..p, so position 1 is out of reach from p >= 513
    assert lm.config.layer_types[0] == "sliding_attention"
    np.testing.assert_array_equal(a[0, 1 + window:], b[0, 1 + window:])
    assert np.abs(a[0, 1:1 + window] - b[0, 1:1 + window]).max(axis=-1).min() > 0
    # the same computation with the window disabled does see position 1 from everywhere
    unwindowed = dataclasses.replace(
        lm, config=dataclasses.replace(lm.config, sliding_window=lm.config.max_context))
    c = np.asarray(unwindowed.activations(jnp.asarray(ids), "resid_post.0"))
    d = np.asarray(unwindowed.activations(jnp.asarray(other), "resid_post.0"))
    assert np.abs(c[0, 1 + window:] - d[0, 1 + window:]).max(axis=-1).min() > 0
    np.testing.assert_array_equal(a[0, :window], c[0, :window])
    # a global layer (5) reaches past the window even in the windowed model
    g_a = np.asarray(lm.activations(jnp.asarray(ids), "resid_post.5"))
    g_b = np.asarray(lm.activations(jnp.asarray(other), "resid_post.5"))
    assert np.abs(g_a[0, -1] - g_b[0, -1]).max() > 0


def test_right_padding_matches_unpadded(lm):
    texts = ["def add(a, b):\n    return a + b", "Hello"]
    seqs = [lm.tokenizer.encode(t) for t in texts]
    S = max(map(len, seqs)) + 3
    ids = np.full((2, S), lm.tokenizer.pad_id, np.int32)
    mask = np.zeros((2, S), bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = s, True
    batched = np.asarray(lm.activations(jnp.asarray(ids), ["resid_post.3", "resid_post.11"],
                                        mask=jnp.asarray(mask))["resid_post.11"])
    for i, s in enumerate(seqs):
        alone = np.asarray(lm.activations(jnp.asarray([s], jnp.int32), "resid_post.11"))
        # float32 sums reassociate with the shape; padding leaking in would move values by O(1)
        scale = float(np.abs(alone).max())
        np.testing.assert_allclose(batched[i, :len(s)], alone[0], rtol=1e-4, atol=1e-5 * scale)
    assert np.isfinite(batched).all()


def _add(x, v):
    return x + v


def _identity(x, args):
    return x


def test_edits_identity_and_nontrivial(lm):
    ids = jnp.asarray([lm.tokenizer.encode("Steering vectors move the residual stream.")])
    clean = np.asarray(lm.logits(ids))
    same = np.asarray(lm.logits(ids, edits={"resid_post.6": (_identity, ())}))
    np.testing.assert_array_equal(same, clean)
    direction = jnp.asarray(np.random.default_rng(1).normal(size=(640,)), jnp.float32)
    size_before = _forward_jit._cache_size()
    edited = [np.asarray(lm.logits(ids, edits={"resid_post.6": (_add, s * direction)}))
              for s in (0.0, 20.0, 40.0)]
    # the strength is traced data: one compilation serves every strength
    assert _forward_jit._cache_size() - size_before == 1
    np.testing.assert_allclose(edited[0], clean, atol=1e-5)
    assert np.abs(edited[1] - clean).max() > 1.0
    assert np.abs(edited[2] - edited[1]).max() > 1.0
    # an edit downstream of a hook does not change that hook; upstream does
    acts = lm.activations(ids, "resid_post.4")
    np.testing.assert_array_equal(
        acts, lm.activations(ids, "resid_post.4", edits={"resid_post.6": (_add, direction)}))
    moved = lm.activations(ids, "resid_post.4", edits={"resid_post.2": (_add, direction)})
    assert float(jnp.abs(moved - acts).max()) > 0.1


@pytest.mark.slow
def test_kv_cache_generation_equals_full_reforward(lm):
    direction = jnp.asarray(np.random.default_rng(2).normal(size=(640,)), jnp.float32) * 5.0
    for edits in (None, {"resid_post.8": (_add, direction)}):
        prompt = lm.tokenizer.encode("import numpy as np\n\ndef mean(xs):")
        n_new = 6
        got = lm.generate(prompt, n_new, edits=edits)
        S = len(prompt) + n_new
        seq = list(prompt)
        for _ in range(n_new):  # greedy by full re-forward, one fixed padded shape
            ids = np.full((1, S), lm.tokenizer.pad_id, np.int32)
            ids[0, :len(seq)] = seq
            mask = np.arange(S)[None, :] < len(seq)
            logits = lm.logits(jnp.asarray(ids), mask=jnp.asarray(mask), edits=edits)
            seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
        assert got == seq[len(prompt):], (edits is not None, got, seq[len(prompt):])


def test_sampling_is_seeded(lm):
    prompt = lm.tokenizer.encode("Once upon a time")
    a = lm.generate(prompt, 5, temperature=1.0, seed=3)
    assert a == lm.generate(prompt, 5, temperature=1.0, seed=3)
    assert len(a) == 5 and all(0 <= t < lm.config.vocab_size for t in a)
    assert any(lm.generate(prompt, 5, temperature=1.0, seed=s) != a for s in (4, 5, 6))


def test_bad_hooks_and_inputs(lm):
    ids = jnp.asarray([[2, 818]], jnp.int32)
    with pytest.raises(ValueError, match=r"0\.\.17"):
        lm.activations(ids, "resid_post.18")
    with pytest.raises(ValueError, match=r"0\.\.17"):
        lm.activations(ids, "resid_post.-1")
    with pytest.raises(ValueError, match="unknown hook 'mlp_hidden.3'.*mlp_in, mlp_out"):
        lm.activations(ids, "mlp_hidden.3")
    with pytest.raises(ValueError, match="out of range"):
        lm.logits(ids, edits={"resid_post.40": (_identity, ())})
    with pytest.raises(ValueError, match="mask must be bool"):
        lm.logits(ids, mask=jnp.ones((1, 3), bool))
    assert lm.unembed_matrix.shape == (lm.config.vocab_size, lm.config.d_model)
    assert lm.name == "gemma3-270m"
