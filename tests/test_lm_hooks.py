"""Hook points of a Gemma 3 block (jaxdict.lm.hooks) on the real Gemma 3 270M: the residual
recomposes exactly from the pieces, each hook sits where the docs say relative to the four norms,
edits at any hook point act inside the pass, and a multi-hook harvest writes row-aligned stores."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdict.lm
from jaxdict.corpus import open_corpus
from jaxdict.harvest import HarvestConfig, harvest
from jaxdict.lm.hooks import HOOK_KINDS, HookPoint, parse_hook, parse_hook_point
from jaxdict.lm.model import rms_norm
from jaxdict.store import open_store

LAYER = 9
TEXT = "import hashlib\n\ndef check(password, stored):\n    return hashlib.sha256(password).hexdigest() == stored\n"


@pytest.fixture(scope="module")
def lm():
    return jaxdict.lm.load("gemma3-270m")


@pytest.fixture(scope="module")
def acts(lm):
    ids = jnp.asarray([lm.tokenizer.encode(TEXT)], jnp.int32)
    names = [f"{k}.{LAYER}" for k in HOOK_KINDS] + [f"resid_post.{LAYER - 1}"]
    out = lm.activations(ids, names)
    return ids, {h: np.asarray(v) for h, v in out.items()}


def _assert_sum_within_one_rounding(total, *terms):
    """total == a + b up to one float32 rounding.

    XLA:CPU contracts the last multiply of a norm (x * rsqrt(var) * w) with the residual add
    into one fused multiply-add, so the model adds the *unrounded* product while the hook stores
    it rounded: measured on Gemma 3 270M, 17-25 % of entries differ, by at most one ulp of the
    largest term. The tiny model (d 16, not vectorised that way) recomposes bitwise.
    """
    expected = np.zeros_like(total)
    for t in terms:
        expected = expected + t
    # The unrounded product differs from the stored term by up to half an ulp of that *term*,
    # which can be far larger than the sum when the pieces cancel (BOS rows reach |x| ~ 3000).
    assert len(terms) == 2, "one addition at a time: the bound is for a single rounding"
    largest = np.max(np.abs(np.stack([total, *terms])), axis=0)
    bound = (len(terms) - 1) * np.spacing(largest)
    assert np.all(np.abs(total - expected) <= bound), np.abs(total - expected).max()


def test_residual_recomposes_from_the_pieces(acts):
    _, a = acts
    pre, attn, mid, mlp = (a[f"{k}.{LAYER}"] for k in ("resid_pre", "attn_out", "resid_mid", "mlp_out"))
    np.testing.assert_array_equal(pre, a[f"resid_post.{LAYER - 1}"])
    _assert_sum_within_one_rounding(mid, pre, attn)
    _assert_sum_within_one_rounding(a[f"resid_post.{LAYER}"], mid, mlp)
    assert np.abs(attn).max() > 1.0 and np.abs(mlp).max() > 1.0  # real contributions, not zeros
    # Swapping two pieces breaks it: the check can fail.
    with pytest.raises(AssertionError):
        _assert_sum_within_one_rounding(a[f"resid_post.{LAYER}"], mid, attn)


def test_tiny_model_recomposes_bitwise():
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_lm import tiny_lm

    lm = tiny_lm(n_layers=3)
    ids = jnp.asarray([lm.tokenizer.encode("def f(x):\n    return x + 1\n")], jnp.int32)
    a = {h: np.asarray(v) for h, v in lm.activations(ids, [f"{k}.1" for k in HOOK_KINDS]).items()}
    np.testing.assert_array_equal(a["resid_mid.1"], a["resid_pre.1"] + a["attn_out.1"])
    np.testing.assert_array_equal(a["resid_post.1"], a["resid_pre.1"] + a["attn_out.1"] + a["mlp_out.1"])


def test_mlp_hooks_sit_after_their_norms(lm, acts):
    _, a = acts
    layer = lm.params["layers"][LAYER]
    eps = lm.config.rms_norm_eps
    mid = jnp.asarray(a[f"resid_mid.{LAYER}"])
    mlp_in = a[f"mlp_in.{LAYER}"]
    np.testing.assert_allclose(mlp_in, np.asarray(rms_norm(mid, layer["ffn_norm"], eps)), rtol=1e-5, atol=1e-5)
    # The norm weight (1 + w) is included: without it the values differ by far more than rounding.
    unweighted = np.asarray(rms_norm(mid, jnp.ones_like(layer["ffn_norm"]), eps))
    assert np.abs(mlp_in - unweighted).max() > 0.1
    h = jnp.asarray(mlp_in)
    hidden = jax.nn.gelu(h @ layer["gate"], approximate=True) * (h @ layer["up"])
    mlp_out = np.asarray(rms_norm(hidden @ layer["down"], layer["post_ffn_norm"], eps))
    np.testing.assert_allclose(a[f"mlp_out.{LAYER}"], mlp_out, rtol=1e-4, atol=1e-4 * np.abs(mlp_out).max())


def test_edits_at_mlp_out_replace_what_the_mlp_adds(lm, acts):
    ids, a = acts
    zero_mlp = {f"mlp_out.{LAYER}": (lambda x, _: jnp.zeros_like(x), None)}
    out = lm.activations(ids, [f"resid_mid.{LAYER}", f"resid_post.{LAYER}"], edits=zero_mlp)
    np.testing.assert_array_equal(np.asarray(out[f"resid_post.{LAYER}"]), np.asarray(out[f"resid_mid.{LAYER}"]))
    np.testing.assert_array_equal(np.asarray(out[f"resid_mid.{LAYER}"]), a[f"resid_mid.{LAYER}"])
    identity = {f"mlp_out.{LAYER}": (lambda x, _: x, None)}
    np.testing.assert_array_equal(np.asarray(lm.logits(ids, edits=identity)), np.asarray(lm.logits(ids)))
    ablated = np.asarray(lm.logits(ids, edits=zero_mlp))
    assert np.abs(ablated - np.asarray(lm.logits(ids))).max() > 0.1  # the MLP matters downstream


def test_parse_hook_names():
    assert parse_hook_point("mlp_in.3", 18) == HookPoint("mlp_in", 3)
    assert parse_hook("attn_out.17", 18) == 17 and HookPoint("resid_mid", 4).name == "resid_mid.4"
    with pytest.raises(ValueError, match=r"unknown hook 'mlp_hidden.3'.*resid_pre, attn_out"):
        parse_hook_point("mlp_hidden.3", 18)
    with pytest.raises(ValueError, match=r"layer 18 out of range.*0\.\.17"):
        parse_hook_point("mlp_out.18", 18)


def test_multi_hook_harvest_writes_row_aligned_stores(lm, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    source = (Path(np.__file__).parent / "lib" / "_function_base_impl.py").read_text()
    for i in range(6):
        (folder / f"d{i}.txt").write_text(source[i * 700:i * 700 + 500])
    hooks = ("resid_pre.1", "attn_out.1", "resid_mid.1", "mlp_in.1", "mlp_out.1", "resid_post.1")
    harvest(lm, open_corpus(str(folder)), tmp_path / "out", HarvestConfig(hooks=hooks, context=32),
            progress=False)
    stores = {h: open_store(str(tmp_path / "out" / h)) for h in hooks}
    n = stores["resid_pre.1"].n_rows
    assert n > 100 and all(s.n_rows == n for s in stores.values())
    meta = {h: s.read_meta(0, n) for h, s in stores.items()}
    for h in hooks[1:]:
        for key in meta[hooks[0]]:
            np.testing.assert_array_equal(meta[h][key], meta[hooks[0]][key])  # same token in row i
    x = {h: s.read(0, n) for h, s in stores.items()}
    _assert_sum_within_one_rounding(x["resid_mid.1"], x["resid_pre.1"], x["attn_out.1"])
    _assert_sum_within_one_rounding(x["resid_post.1"], x["resid_mid.1"], x["mlp_out.1"])
    # bf16 stores, as the transcoder data is kept on this machine (issue 16: 6 hooks x 1M tokens
    # in fp32 is ~15 GB per layer).
    harvest(lm, open_corpus(str(folder)), tmp_path / "bf16",
            HarvestConfig(hooks=("mlp_in.1", "mlp_out.1"), context=32, dtype="bfloat16"), progress=False)
    mlp_in = open_store(str(tmp_path / "bf16" / "mlp_in.1")).read(0, n).astype(np.float32)
    np.testing.assert_allclose(mlp_in, x["mlp_in.1"], rtol=2 ** -8, atol=1e-6)
