"""A transcoder inside the language model (issue 16 item 3): it replaces the MLP's output by its
prediction from the MLP's input of the same block (the spliced delta_ce / kl), and a clamp of one
of its features moves the MLP's output along that feature's decoder row, BOS left alone."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdict.evaluate.spliced import sae_splice_metrics, splice_edit, transcoder_replacement_edit
from jaxdict.evaluate.steering import steering_edit
from jaxdict.sae.config import SAEConfig
from jaxdict.sae.inference import SAE
from jaxdict.sae.params import init_params
from tiny_lm import D_MODEL, tiny_lm

LAYER = 1


def tiny_transcoder(skip: bool = True, **fields) -> SAE:
    cfg = SAEConfig(arch="relu_l1", d_in=D_MODEL, d_out=D_MODEL, n_features=24, skip_connection=skip, **fields)
    params = init_params(cfg, jax.random.PRNGKey(2))
    if skip:
        params = params.replace(W_skip=0.1 * jax.random.normal(jax.random.PRNGKey(3), (D_MODEL, D_MODEL)))
    return SAE(cfg=cfg, params=params, hook=f"mlp_in.{LAYER}", target_hook=f"mlp_out.{LAYER}", model="tiny-gemma")


def ids_of(lm, text="def f(x):\n    return x + 1"):
    return jnp.asarray([lm.tokenizer.encode(text)], jnp.int32)


def test_replacement_puts_the_prediction_from_mlp_in_at_mlp_out():
    lm, tc = tiny_lm(), tiny_transcoder()
    ids = ids_of(lm)
    hook, fn = splice_edit(tc)
    assert hook == f"mlp_out.{LAYER}" and fn.reads == "mlp_in"
    where = jnp.ones(ids.shape, bool).at[:, 0].set(False)
    clean = lm.activations(ids, [f"mlp_in.{LAYER}", f"mlp_out.{LAYER}"])
    edited = lm.activations(ids, [f"mlp_in.{LAYER}", f"mlp_out.{LAYER}"], edits={hook: (fn, (tc.params, where))})
    # The MLP input is upstream of the edit, so unchanged; the output is the transcoder's prediction.
    np.testing.assert_array_equal(np.asarray(edited[f"mlp_in.{LAYER}"]), np.asarray(clean[f"mlp_in.{LAYER}"]))
    want = np.asarray(tc.reconstruct(clean[f"mlp_in.{LAYER}"][0]))
    got = np.asarray(edited[f"mlp_out.{LAYER}"][0])
    np.testing.assert_allclose(got[1:], want[1:], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[0], np.asarray(clean[f"mlp_out.{LAYER}"][0, 0]))  # BOS kept
    assert np.abs(got[1:] - np.asarray(clean[f"mlp_out.{LAYER}"][0, 1:])).max() > 1e-2


def test_splice_metrics_equal_a_hand_written_replacement():
    """With W_dec = 0 a skip transcoder predicts x W_skip + b_dec: its spliced ce and kl must equal
    those of that linear map written by hand at mlp_out reading mlp_in, which pins the splice to the
    right hooks and layer."""
    lm = tiny_lm()
    tc = tiny_transcoder()
    tc = SAE(cfg=tc.cfg, params=tc.params.replace(W_dec=jnp.zeros_like(tc.params.W_dec)), hook=tc.hook,
             target_hook=tc.target_hook, model="tiny-gemma")
    windows = [list(np.asarray(ids_of(lm, t))[0]) for t in ("import os\nprint(os.sep)", "x = [1, 2, 3]\n")]
    m = sae_splice_metrics(lm, tc, windows, batch_size=2)

    def linear_mlp(y, args, source):
        where = args
        return jnp.where(where[..., None], source @ tc.params.W_skip + tc.params.b_dec, y)

    linear_mlp.reads = "mlp_in"
    from jaxdict.evaluate.spliced import compare_edits, zero_ablation_edit

    ref = compare_edits(lm, f"mlp_out.{LAYER}", windows, {"lin": (linear_mlp, lambda w: w),
                                                          "zero": (zero_ablation_edit, lambda w: w)})
    assert m["ce_sae"] == pytest.approx(ref["lin"]["ce"], rel=1e-5)
    assert m["kl"] == pytest.approx(ref["lin"]["kl"], rel=1e-4, abs=1e-7)
    assert m["ce_zero_ablation"] == pytest.approx(ref["zero"]["ce"], rel=1e-6)
    assert m["kl"] > 0


def test_an_edit_reading_a_later_hook_is_refused():
    lm = tiny_lm()
    fn = transcoder_replacement_edit(tiny_transcoder().cfg, "mlp_out")
    with pytest.raises(ValueError, match="reads hook mlp_out.1, which does not come before it"):
        lm.activations(ids_of(lm), f"mlp_in.{LAYER}", edits={f"mlp_in.{LAYER}": (fn, (None, None))})


def test_clamping_a_transcoder_feature_moves_mlp_out_along_its_decoder_row():
    lm, tc = tiny_lm(), tiny_transcoder()
    ids = ids_of(lm)
    hooks = [f"mlp_in.{LAYER}", f"mlp_out.{LAYER}"]
    clean = lm.activations(ids, hooks)
    f = np.asarray(tc.encode(clean[hooks[0]][0]))
    feature, value = 5, 9.0
    edit = steering_edit(tc, [feature], [value])
    assert list(edit) == [f"mlp_out.{LAYER}"]
    steered = np.asarray(lm.activations(ids, hooks[1], edits=edit))[0]
    want = np.asarray(clean[hooks[1]][0]) + (value - f[:, feature])[:, None] * np.asarray(tc.params.W_dec[feature])
    np.testing.assert_allclose(steered[1:], want[1:], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(steered[0], np.asarray(clean[hooks[1]][0, 0]))
    # Clamping to the current value is no edit at all (up to float rounding).
    same = steering_edit(tc, [feature], [float(f[3, feature])])
    moved = np.asarray(lm.activations(ids, hooks[1], edits=same))[0, 3]
    np.testing.assert_allclose(moved, np.asarray(clean[hooks[1]][0, 3]), rtol=1e-5, atol=1e-6)
