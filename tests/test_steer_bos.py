"""Steering leaves position 0 (BOS) alone by default (DESIGN §4; issue 14 item 5): in full
forwards, in KV-cache generation and in the vector edit; --include-bos edits it too."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdict.evaluate.steering import add_vector_edit, clamp_edit, steering_edit
from jaxdict.sae.config import SAEConfig
from jaxdict.sae.inference import SAE
from jaxdict.sae.params import init_params
from tiny_lm import D_MODEL, tiny_lm

HOOK = "resid_post.0"


def tiny_sae() -> SAE:
    cfg = SAEConfig(arch="relu_l1", d_in=D_MODEL, n_features=24)
    return SAE(cfg=cfg, params=init_params(cfg, jax.random.PRNGKey(1)), hook=HOOK, model="tiny-gemma")


def test_clamp_and_add_skip_position_zero_when_given_positions():
    sae = tiny_sae()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, D_MODEL)), jnp.float32)
    pos = jnp.broadcast_to(jnp.arange(4)[None], (2, 4))
    args = (sae.params, jnp.asarray([3], jnp.int32), jnp.asarray([7.0], jnp.float32))
    everywhere = clamp_edit(sae.cfg)(x, args)  # no positions: a plain function of activations
    skipped = clamp_edit(sae.cfg)(x, args, pos)
    np.testing.assert_array_equal(np.asarray(skipped[:, 0]), np.asarray(x[:, 0]))
    np.testing.assert_allclose(np.asarray(skipped[:, 1:]), np.asarray(everywhere[:, 1:]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(clamp_edit(sae.cfg, True)(x, args, pos)), np.asarray(everywhere), rtol=1e-6)
    v = jnp.arange(D_MODEL, dtype=jnp.float32)
    added = np.asarray(add_vector_edit()(x, v, pos))
    np.testing.assert_array_equal(added[:, 0], np.asarray(x[:, 0]))
    np.testing.assert_allclose(added[:, 1:], np.asarray(x[:, 1:] + v), rtol=1e-6)
    # A generation step sits past position 0: it is edited.
    step = np.asarray(add_vector_edit()(x[:, :1], v, jnp.full((2, 1), 5)))
    np.testing.assert_allclose(step, np.asarray(x[:, :1] + v), rtol=1e-6)


def test_lm_forward_leaves_bos_alone_unless_asked():
    lm, sae = tiny_lm(), tiny_sae()
    ids = jnp.asarray([lm.tokenizer.encode("def f(x):\n    return x")], jnp.int32)
    clean = np.asarray(lm.activations(ids, HOOK))
    edit = steering_edit(sae, [5], [40.0])
    steered = np.asarray(lm.activations(ids, HOOK, edits=edit))
    np.testing.assert_array_equal(steered[0, 0], clean[0, 0])
    assert np.linalg.norm(steered[0, 1:] - clean[0, 1:], axis=-1).min() > 1.0  # every later position moved
    with_bos = np.asarray(lm.activations(ids, HOOK, edits=steering_edit(sae, [5], [40.0], include_bos=True)))
    assert np.abs(with_bos[0, 0] - clean[0, 0]).max() > 1.0
    # Logits at position 0 depend only on position 0: unchanged by default, changed with BOS.
    np.testing.assert_array_equal(np.asarray(lm.logits(ids, edits=edit))[0, 0], np.asarray(lm.logits(ids))[0, 0])


@pytest.mark.parametrize("include_bos", [False, True])
def test_generation_matches_teacher_forced_argmax(include_bos):
    """KV-cache generation edits prompt (from position 1, or 0 with BOS) and new tokens alike:
    each greedy token is the argmax of a full steered forward over the prefix."""
    lm, sae = tiny_lm(), tiny_sae()
    prompt = lm.tokenizer.encode("import os")
    edit = steering_edit(sae, [5], [40.0], include_bos=include_bos)
    new = lm.generate(prompt, 4, edits=edit)
    seq = prompt + new
    logits = np.asarray(lm.logits(jnp.asarray([seq]), edits=edit))[0]
    want = [int(np.argmax(logits[len(prompt) - 1 + t])) for t in range(4)]
    assert new == want
