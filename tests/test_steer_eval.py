"""steer-eval on a tiny random Gemma with the real tokenizer and a tiny SAE: each metric against a
hand computation, the matched-KL interpolation, every baseline, no test-prompt leakage, bad suites
and token boundaries."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdict.evaluate import steer_metrics as M
from jaxdict.evaluate.steer_eval import Settings, completion_examples, run_steer_eval, select_on_dev
from jaxdict.evaluate.steer_methods import build_methods, reference_norm
from jaxdict.evaluate.steer_suite import SuiteError, load_suite
from jaxdict.evaluate.steering import steering_edit
from test_steer_bos import HOOK, tiny_sae
from tiny_lm import tiny_lm


def sae_with_max():
    sae = tiny_sae()
    return sae.with_max_activations(np.linspace(0.5, 2.0, sae.n_features).astype(np.float32))


def write_suite(path, rows, header=None):
    lines = ([json.dumps(header)] if header else []) + [json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def rows(test_targets=(" yes", " no")):
    out = []
    for i, kind in enumerate(["a", "a", "b", "b"]):
        out.append({"kind": kind, "split": "dev", "prompt": f"x = {i} +", "target": " 1", "alternative": " 2",
                    "pattern": r"^\s*1"})
    for i, kind in enumerate(["c", "c", "d"]):
        out.append({"kind": kind, "split": "test", "prompt": f"print({i},", "target": test_targets[0],
                    "alternative": test_targets[1], "pattern": "yes"})
    return out


def lp_hand(lm, ids, edits=None):
    return np.asarray(jax.nn.log_softmax(lm.logits(jnp.asarray([ids]), edits=edits)[0], axis=-1), np.float64)


def test_completion_logprobs_and_behaviour_by_hand(tmp_path):
    lm, sae = tiny_lm(), sae_with_max()
    suite = load_suite(str(write_suite(tmp_path / "s.jsonl", rows())), lm.tokenizer, lm.config.max_context)
    edit = steering_edit(sae, [3], [5.0])
    for p in suite.prompts[:2] + suite.prompts[-1:]:
        for e in (None, edit):
            want = {}
            for which in ("target", "alternative"):
                comp = list(getattr(p, which + "_ids"))
                ids = list(p.prompt_ids) + comp
                lp = lp_hand(lm, ids, e)
                want[which] = sum(lp[len(p.prompt_ids) + j - 1, t] for j, t in enumerate(comp))
            got = M.behaviour(lm, [p], e)[0]
            assert got == pytest.approx(want["target"] - want["alternative"], abs=2e-4)


def test_neutral_kl_by_hand_bos_excluded():
    lm, sae = tiny_lm(), sae_with_max()
    ids = lm.tokenizer.encode("The cat sat on the mat.\ndef f(): return 1")
    edit = steering_edit(sae, [3], [9.0])
    base, steered = lp_hand(lm, ids), lp_hand(lm, ids, edit)
    kl = (np.exp(base) * (base - steered)).sum(-1)
    assert kl[0] == pytest.approx(0.0, abs=1e-9)  # position 0 is never edited
    assert M.neutral_kl(lm, ids, edit) == pytest.approx(kl[1:].mean(), rel=1e-4)
    # Prompting: [BOS, prefix, text] compared at the text's own positions.
    prefix = lm.tokenizer.encode("# note\n", add_bos=False)
    pre = lp_hand(lm, ids[:1] + prefix + ids[1:])[len(prefix) + 1:]
    want = (np.exp(base[1:]) * (base[1:] - pre)).sum(-1).mean()
    assert M.neutral_kl(lm, ids, None, prefix) == pytest.approx(want, rel=1e-4)
    assert M.neutral_kl(lm, ids, None) == pytest.approx(0.0, abs=1e-6)


def test_greedy_generate_equals_kv_cache_generation_and_perplexity_by_hand():
    lm, sae = tiny_lm(), sae_with_max()
    prompts = [lm.tokenizer.encode("import os"), lm.tokenizer.encode("for i in range(10):")]
    edit = steering_edit(sae, [7], [6.0])
    got = M.greedy_generate(lm, prompts, 4, edit)
    assert got == [lm.generate(p, 4, edits=edit) for p in prompts]
    nll, n = 0.0, 0
    for p, g in zip(prompts, got):
        lp = lp_hand(lm, p + g)
        nll -= sum(lp[len(p) + j - 1, t] for j, t in enumerate(g))
        n += len(g)
    assert M.perplexity(lm, prompts, got) == pytest.approx(np.exp(nll / n), rel=1e-4)


def test_matched_kl_interpolation_by_hand():
    pts = [(0.2, 1.0), (0.05, 0.5), (0.8, 1.6)]
    # Through (0, 0): 0.05 -> 0.5, 0.2 -> 1.0, 0.8 -> 1.6.
    assert M.interpolate_at_kl(pts, 0.1) == pytest.approx(0.5 + 0.5 * (0.05 / 0.15))
    assert M.interpolate_at_kl(pts, 0.3) == pytest.approx(1.0 + 0.6 * (0.1 / 0.6))
    assert M.interpolate_at_kl(pts, 0.02) == pytest.approx(0.5 * 0.02 / 0.05)
    assert M.interpolate_at_kl(pts, 1.0) is None  # never reached
    assert M.interpolate_at_kl([(0.4, -2.0)], 0.1) == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="KL budget"):
        M.interpolate_at_kl(pts, -1)


def test_summary_wrong_way_and_kinds():
    s = M.summary_of(np.array([1.0, -0.5, 2.0, 0.1, -0.2, -0.3]), ["a", "a", "b", "b", "c", "c"])
    assert s["wrong_way"] == 3 and s["n"] == 6
    assert s["mean_shift"] == pytest.approx(np.mean([1.0, -0.5, 2.0, 0.1, -0.2, -0.3]))
    # a: mean 0.25 but only half its prompts move -> not moved; b moved; c not.
    assert s["kinds_moved"] == 1 and s["per_kind"]["b"]["moved"] and not s["per_kind"]["a"]["moved"]
    down = M.summary_of(np.array([-1.0, -2.0, 0.5]), ["a", "a", "a"], direction=-1.0)
    assert down["wrong_way"] == 1 and down["kinds_moved"] == 1 and down["mean_shift"] == pytest.approx(-2.5 / 3)


def test_baselines_by_hand(tmp_path):
    lm, sae = tiny_lm(), sae_with_max()
    suite = load_suite(str(write_suite(tmp_path / "s.jsonl", rows(), {"suite": "t", "prefix": "# yes yes\n"})),
                       lm.tokenizer, lm.config.max_context)
    dev = suite.split("dev")
    settings = Settings(strengths=(1.0, 4.0), n_candidates=2)
    chosen = select_on_dev(lm, sae, dev, lm.tokenizer.encode("a b c d e f g h"), settings, log=lambda s: None)
    # DiffMean: mean hook activation over dev target tokens minus over dev alternative tokens.
    def acts(which):
        out = []
        for e in completion_examples(dev, which):
            a = np.asarray(lm.activations(jnp.asarray([e.ids]), HOOK))[0]
            out.append(a[list(e.span)])
        return np.concatenate(out).mean(0)
    np.testing.assert_allclose(chosen["diffmean"], acts("target") - acts("alternative"), rtol=1e-4, atol=1e-5)
    prefix = tuple(lm.tokenizer.encode(suite.prefix, add_bos=False))
    methods = {m.name: m for m in build_methods(sae, chosen["feature"], chosen["diffmean"], prefix, seed=3)}
    f = chosen["feature"]
    r = float(sae.max_activations[f]) * float(np.linalg.norm(np.asarray(sae.params.W_dec[f])))
    assert reference_norm(sae, f) == pytest.approx(r, rel=1e-6)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 16)), jnp.float32)
    pos = jnp.arange(3)[None]
    for name, direction in [("feature-add", np.asarray(sae.params.W_dec[f])), ("diffmean", chosen["diffmean"]),
                            ("random-direction", None)]:
        fn, vec = methods[name].edits(sae, 2.5)[HOOK]
        delta = np.asarray(fn(x, vec, pos) - x)
        np.testing.assert_array_equal(delta[0, 0], 0)  # BOS untouched
        assert np.linalg.norm(delta[0, 1]) == pytest.approx(2.5 * r, rel=1e-4)  # equal norm at equal strength
        if direction is not None:
            cos = delta[0, 1] @ direction / np.linalg.norm(delta[0, 1]) / np.linalg.norm(direction)
            assert cos == pytest.approx(1.0, abs=1e-5)
    rf = methods["random-feature"]
    assert rf.feature != f and sae.max_activations[rf.feature] > 0
    fn, args = rf.edits(sae, 3.0)[HOOK]
    assert float(args[2][0]) == pytest.approx(3.0 * float(sae.max_activations[rf.feature]))
    # Prompting: the shift is the hand-computed preference with the prefix minus without.
    p = suite.split("test")[0]
    def pref(ctx):
        lps = [lp_hand(lm, ctx + list(c)) for c in (p.target_ids, p.alternative_ids)]
        return [sum(lp[len(ctx) + j - 1, t] for j, t in enumerate(c)) for lp, c in zip(lps, (p.target_ids, p.alternative_ids))]
    with_p, without = pref(list(p.prompt_ids[:1]) + list(prefix) + list(p.prompt_ids[1:])), pref(list(p.prompt_ids))
    got = M.behaviour(lm, [p], None, methods["prompting"].prefix_ids)[0] - M.behaviour(lm, [p])[0]
    assert got == pytest.approx((with_p[0] - with_p[1]) - (without[0] - without[1]), abs=2e-4)


def test_operating_point_must_move_dev_the_right_way():
    from jaxdict.evaluate.steer_eval import best_point, verdict

    points = [{"strength": 2.0, "kl": 0.22, "dev_mean_shift": -1.16},   # within KL, wrong way on dev
              {"strength": 8.0, "kl": 4.95, "dev_mean_shift": 12.6},    # right way, over the KL budget
              {"strength": -4.0, "kl": 0.1, "dev_mean_shift": 3.0}]     # suppression: never the operating point
    assert best_point(points, select_kl=0.5) is None
    v = verdict(None, n_test_kinds=5, select_kl=0.5)
    assert not v["concept_feature"] and "right way" in v["reason"]
    points.append({"strength": 4.0, "kl": 0.4, "dev_mean_shift": 0.3})
    assert best_point(points, select_kl=0.5)["strength"] == 4.0
    assert best_point([{"strength": None, "kl": 0.1, "dev_mean_shift": -0.3}], select_kl=0.5) is None  # prompting
