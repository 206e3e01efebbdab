"""SAEBench's first-letter absorption metric (jaxdict/evaluate/absorption*.py) on data where the
answer is known: a planted SAE whose main latent for one letter is silenced on some words, whose
probe direction a token-specific latent carries instead (absorption), against a clean SAE."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdict.evaluate import absorption as ab
from jaxdict.evaluate import absorption_probes as probes
from jaxdict.evaluate.absorption_data import AbsorptionSettings, ProbeData
from jaxdict.sae.config import SAEConfig
from jaxdict.sae.inference import SAE
from jaxdict.sae.params import SAEParams


# -- probes ----------------------------------------------------------------------------------------
def test_balanced_logistic_reaches_the_optimum_of_sklearns_objective():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    y = x @ np.array([1.5, -2.0, 0.0, 0.5]) + 0.3 * rng.normal(size=300) > 0.8  # unbalanced classes
    w, b = probes.fit_balanced_logistic(x, y)
    # Gradient of ½‖w‖² + Σ s_i logloss_i (s: balanced class weights) vanishes at the optimum.
    s = np.where(y, len(y) / (2 * y.sum()), len(y) / (2 * (~y).sum()))
    p = 1 / (1 + np.exp(-(x @ w + b)))
    grad_w = w + x.T @ (s * (p - y))
    grad_b = np.sum(s * (p - y))
    assert np.abs(grad_w).max() < 1e-4 and abs(grad_b) < 1e-4
    assert w[0] > 0 and w[1] < 0 and abs(w[2]) < 0.3  # recovers the planted signs
    with pytest.raises(ValueError, match="both classes"):
        probes.fit_balanced_logistic(x, np.zeros(300, bool))


def _letter_data(rng, n_per_letter, d, noise=0.3):
    letters = np.repeat(np.arange(26), n_per_letter)
    x = 3.0 * np.eye(d, dtype=np.float32)[letters] + noise * rng.normal(size=(len(letters), d))
    return x.astype(np.float32), letters


def test_letter_probes_find_each_letters_direction():
    rng = np.random.default_rng(1)
    x, y = _letter_data(rng, 12, 32)
    got = probes.train_letter_probes(x, y, 26, batch_size=64, epochs=20, lr=1e-2, end_lr=1e-5,
                                     weight_decay=1e-4, steps_per_epoch=200, seed=0)
    xt, yt = _letter_data(rng, 6, 32)
    scores = got.scores(xt)
    for letter in range(26):
        assert probes.f1_score(yt == letter, scores[:, letter] > 0) > 0.9, letter  # pos_weight 25 admits a stray FP
        w = got.weights[letter]
        # Its own letter's direction pushes up, every other letter's down (one-vs-rest).
        others = np.delete(w[:26], letter)
        assert w[letter] > 0.5 and np.all(others < 0) and np.argmax(np.abs(w)) == letter, letter


def test_f1_and_the_feature_split_rule():
    t = np.array([1, 1, 0, 0, 1], bool)
    assert probes.f1_score(t, np.array([1, 0, 1, 0, 1], bool)) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert probes.f1_score(np.zeros(3, bool), np.zeros(3, bool)) == 0.0
    lat = [[np.arange(k) + 10 for k in range(1, 6)]]
    # F1 rises by > 0.03 from k=1 to 2, then by only 0.02: the main latents are those of k = 2.
    res = probes.KSparseResult(lat, np.array([[0.5, 0.6, 0.62, 0.9, 0.95]]))
    assert probes.main_latents(res, 0) == [10, 11]
    res = probes.KSparseResult(lat, np.array([[0.5, 0.54, 0.58, 0.62, 0.66]]))
    assert probes.main_latents(res, 0) == [10, 11, 12, 13, 14]


# -- the absorption criterion, by hand -------------------------------------------------------------
def _criterion_case(main_act, absorber_act, absorber_cos, act_proj):
    """Probe along e0; latent 0 (main, decoder e0), latent 1 (decoder at cos `absorber_cos`)."""
    acts = np.zeros((1, 4))
    acts[0, 0] = act_proj
    latents = np.array([[main_act, absorber_act, 0.0]])
    cos = np.array([1.0, absorber_cos, 0.0])
    return ab.absorption_scores(acts, latents, cos, [0], np.array([2.0, 0, 0, 0]))


def test_absorption_criterion_hand_computed_cases():
    # Clean: the main latent carries the whole projection.
    frac, full = _criterion_case(2.0, 0.0, 0.6, 2.0)
    assert frac[0] == 0.0 and not full[0]
    # Full absorption: main silent, latent 1 carries 3 · 0.6 = 1.8 of 1.8.
    frac, full = _criterion_case(0.0, 3.0, 0.6, 1.8)
    assert frac[0] == 1.0 and full[0]
    # Partial: main 0.5, absorber 2 · 0.6 = 1.2 of 1.7 (share 0.71 ≥ 0.4): fraction 1.2 / 1.7.
    frac, full = _criterion_case(0.5, 2.0, 0.6, 1.7)
    assert frac[0] == pytest.approx(1.2 / 1.7) and not full[0]
    # Absorber share below 0.4 (0.6 of 1.6): no absorption.
    frac, full = _criterion_case(1.0, 1.0, 0.6, 1.6)
    assert frac[0] == 0.0 and not full[0]
    # Absorber cos 0.05: too weak for the fraction (< 0.1) but enough for full absorption (≥ 0.025).
    frac, full = _criterion_case(0.0, 20.0, 0.05, 1.0)
    assert frac[0] == 0.0 and full[0]
    # cos 0.02 < 0.025: not full absorption either.
    frac, full = _criterion_case(0.0, 40.0, 0.02, 0.8)
    assert not full[0]
    # The probe does not fire along its direction (negative projection): never absorption.
    frac, full = _criterion_case(0.0, 3.0, 0.6, -1.0)
    assert frac[0] == 0.0 and not full[0]


# -- a planted SAE, end to end (without the LM) ----------------------------------------------------
D, N_TRAIN, N_TEST = 96, 16, 8
ABSORBED_TRAIN, ABSORBED_TEST = 4, 4  # words of letter "a" (index 0) whose main latent is silenced


def _planted(rng):
    """Activations: 3·e_letter + noise; the absorbed "a" words add 4·u_t (a direction of their own)."""
    def split(n, n_absorbed, first_token):
        letters = np.repeat(np.arange(26), n)
        x = 3.0 * np.eye(D)[letters] + 0.1 * rng.normal(size=(len(letters), D))
        tokens = np.full(len(letters), -1)
        tokens[:n_absorbed] = first_token + np.arange(n_absorbed)  # rows of letter 0 come first
        x[:n_absorbed] += 4.0 * np.eye(D)[26 + tokens[:n_absorbed]]
        return x.astype(np.float32), letters, tokens

    tr = split(N_TRAIN, ABSORBED_TRAIN, 0)
    te = split(N_TEST, ABSORBED_TEST, ABSORBED_TRAIN)
    absorb = te[0] + 0.05 * rng.normal(size=te[0].shape).astype(np.float32)  # another prompt, same word
    return tr, te, absorb


def _sae(absorbing: bool, probe_a: np.ndarray) -> SAE:
    """ReLU SAE: latent c reads e_c (bias −1) and writes e_c, except latent 0, which writes p, the
    unit direction of letter "a"'s probe; latent 26 + t reads u_t.
    Absorbing: latent 26 + t writes (p + u_t)/‖·‖, the probe direction with the token's, and latent 0
    also reads −Σ_t u_t, so it is silent on those words. Clean: latent 26 + t writes u_t only."""
    n_tok = ABSORBED_TRAIN + ABSORBED_TEST
    F = 26 + n_tok
    p = probe_a / np.linalg.norm(probe_a)
    w_enc = np.zeros((D, F), np.float32)
    w_dec = np.zeros((F, D), np.float32)
    for c in range(26):
        w_enc[c, c] = 1.0
        w_dec[c, c] = 1.0
    w_dec[0] = p
    for t in range(n_tok):
        w_enc[26 + t, 26 + t] = 1.0
        if absorbing:
            row = p + np.eye(D)[26 + t]
            w_dec[26 + t] = row / np.linalg.norm(row)
            w_enc[26 + t, 0] = -1.0
        else:
            w_dec[26 + t, 26 + t] = 1.0
    cfg = SAEConfig(arch="relu_l1", d_in=D, n_features=F)
    params = SAEParams(W_enc=jnp.asarray(w_enc), b_enc=jnp.full((F,), -1.0, jnp.float32),
                       W_dec=jnp.asarray(w_dec), b_dec=jnp.zeros((D,), jnp.float32), threshold=None)
    return SAE(cfg=cfg, params=params, model="planted", hook="resid_post.0", source="planted")


def _probe_data(rng) -> ProbeData:
    (xtr, ytr, _), (xte, yte, _), absorb = _planted(rng)
    probe = probes.train_letter_probes(xtr, ytr, 26, batch_size=64, epochs=50, lr=1e-2, end_lr=1e-5,
                                       weight_decay=1e-4, steps_per_epoch=40, seed=0)
    return ProbeData(train_words=np.array([f"w{i}" for i in range(len(ytr))]), train_letters=ytr, train_acts=xtr,
                     test_words=np.array([f"t{i}" for i in range(len(yte))]), test_letters=yte, test_acts=xte,
                     absorb_acts=absorb, probe_weights=probe.weights, probe_bias=probe.bias,
                     n_vocabulary=100_000, n_dropped=0)


@pytest.mark.parametrize("absorbing", [True, False])
def test_planted_absorption_is_found_and_a_clean_sae_shows_none(absorbing):
    data = _probe_data(np.random.default_rng(2))
    settings = AbsorptionSettings(hook="resid_post.0")
    result = ab.evaluate_absorption(_sae(absorbing, data.probe_weights[0]), data, settings)
    rows = {r["letter"]: r for r in result["letters"]}
    assert result["n_letters_scored"] == 26
    assert all(r["probe_f1"] > 0.9 and r["main_latents"] == [i] for i, r in enumerate(result["letters"]))
    a = rows["a"]
    assert a["num_probe_true_positives"] == N_TEST
    if absorbing:
        # The 4 absorbed test words of "a", exactly: main latent silent, latent 26 + t fires 3 at
        # cos ≈ 0.7 with the probe and carries more than the whole projection (share ≥ 0.4).
        assert a["num_full_absorption"] == ABSORBED_TEST
        assert a["full_absorption_rate"] == pytest.approx(ABSORBED_TEST / N_TEST)
        assert a["mean_absorption_fraction"] == pytest.approx(ABSORBED_TEST / N_TEST)
        assert result["mean_full_absorption_score"] == pytest.approx(ABSORBED_TEST / N_TEST / 26)
    else:
        assert a["num_full_absorption"] == 0 and a["mean_absorption_fraction"] == 0.0
        assert result["mean_full_absorption_score"] == 0.0
        assert result["mean_absorption_fraction_score"] == 0.0
    others = [r for r in result["letters"] if r["letter"] != "a"]
    assert all(r["full_absorption_rate"] == 0.0 and r["mean_absorption_fraction"] == 0.0 for r in others)
    text = ab.markdown_summary(result)
    assert "| a | " in text and "mean full-absorption rate" in text


def test_prefix_restriction_and_bad_limits():
    data = _probe_data(np.random.default_rng(3))
    sae = _sae(True, data.probe_weights[0])
    lat, norms, unit = ab.sae_latents(sae, data.test_acts, latent_limit=26)
    full, _, _ = ab.sae_latents(sae, data.test_acts)
    assert lat.shape == (len(data.test_acts), 26) and unit.shape == (26, D) and norms.shape == (26,)
    np.testing.assert_array_equal(lat, full[:, :26])
    # Without the token latents nothing carries the silenced words' projection: no absorption.
    result = ab.evaluate_absorption(sae, data, AbsorptionSettings(hook="resid_post.0"),
                                    latent_limit=26)
    assert result["letters"][0]["num_full_absorption"] == 0
    for bad in (0, sae.n_features + 1):
        with pytest.raises(ValueError, match="latent limit"):
            ab.sae_latents(sae, data.test_acts, latent_limit=bad)


def test_too_few_scorable_letters_gives_no_score():
    rng = np.random.default_rng(4)
    data = _probe_data(rng)
    keep = data.test_letters < 10  # only 10 letters have test words: below SAEBench's 20
    data = ProbeData(**{**data.__dict__, "test_letters": data.test_letters[keep], "test_acts": data.test_acts[keep],
                        "absorb_acts": data.absorb_acts[keep], "test_words": data.test_words[keep]})
    result = ab.evaluate_absorption(_sae(True, data.probe_weights[0]), data, AbsorptionSettings(hook="resid_post.0"))
    assert result["n_letters_scored"] == 10
    assert result["mean_full_absorption_score"] is None and "needs 20" in result["not_scored_reason"]
    rates = [r["full_absorption_rate"] for r in result["letters"] if r["scored"]]
    assert rates[0] == pytest.approx(ABSORBED_TEST / N_TEST)  # letter "a" is still planted
    assert result["scored_letters_mean_full_absorption_score"] == pytest.approx(np.mean(rates))
    assert "not a SAEBench score" in ab.markdown_summary(result)


# -- with a language model -------------------------------------------------------------------------
def test_pipeline_on_a_tiny_lm_and_its_cache(tmp_path):
    """Words → prompts → activations → probe → scores, end to end on a tiny random Gemma 3 with the
    real tokenizer; the cache gives back the same activations and (retrained) the same probe."""
    from tiny_lm import tiny_lm

    from jaxdict.evaluate.absorption_data import load_probe_data, probe_data_for
    from jaxdict.sae.params import init_params
    import jax

    lm = tiny_lm()
    # vocabulary_steps=False: the probes take one pass over the 48 train words per epoch, not the
    # 1,745 steps of SAEBench's pass over the whole vocabulary (test time).
    settings = AbsorptionSettings(hook="resid_post.1", n_words=60, lm_batch_size=8, vocabulary_steps=False)
    cache = tmp_path / "acts.npz"
    data = probe_data_for(lm, settings, cache)
    assert cache.is_file()
    assert len(data.train_acts) + len(data.test_acts) + data.n_dropped == 60
    assert data.n_vocabulary > 100_000  # Gemma 3's alphabetic single tokens (139,533)
    assert data.train_acts.shape[1] == 16 and np.isfinite(data.train_acts).all()
    assert np.abs(data.absorb_acts).sum(axis=1).min() > 0
    # Same words, other in-context examples: the two test prompt sets differ.
    assert not np.allclose(data.test_acts, data.absorb_acts)
    again = probe_data_for(lm, settings, cache)
    np.testing.assert_array_equal(again.test_acts, data.test_acts)
    np.testing.assert_array_equal(again.train_words, data.train_words)
    np.testing.assert_array_equal(again.probe_weights, data.probe_weights)
    with pytest.raises(ValueError, match="seed"):
        load_probe_data(cache, AbsorptionSettings(hook="resid_post.1", n_words=60, seed=1,
                                                  vocabulary_steps=False).cache_key(lm.name), settings)
    cfg = SAEConfig(arch="relu_l1", d_in=16, n_features=64)
    sae = SAE(cfg=cfg, params=init_params(cfg, jax.random.PRNGKey(0)), hook="resid_post.1", source="random")
    result = ab.evaluate_absorption(sae, data, settings)
    assert len(result["letters"]) == 26 and result["n_test_words"] == len(data.test_acts)
    assert result["probe_steps_per_epoch"] is None


def test_probe_epochs_as_long_as_saebenchs_pass_over_the_vocabulary():
    s = AbsorptionSettings(hook="resid_post.9", n_words=3000)
    assert s.steps_per_epoch(64, 139_533) == 1745  # ceil(0.8 · 139,533 / 64)
    assert s.steps_per_epoch(4096, 139_533) == 28
    assert AbsorptionSettings(hook="resid_post.9", vocabulary_steps=False).steps_per_epoch(64, 139_533) is None


def test_too_few_words_is_refused():
    with pytest.raises(ValueError, match="--words = 20: need at least 51"):
        AbsorptionSettings(hook="resid_post.9", n_words=20)


@pytest.mark.slow
def test_word_activation_is_read_at_the_word_token_of_gemma():
    """Padded batches read each prompt at its own word token: the same vector as the unpadded
    prompt alone, at len − 6, which is the word's token."""
    from test_eval import gemma

    from jaxdict.evaluate import absorption_prompts as ap

    lm = gemma()
    rng = np.random.default_rng(0)
    words = ap.sample_words(ap.alpha_vocabulary(lm.tokenizer), 40, rng)
    targets = words[:3]
    prompts = ap.prompts_for(targets, words, rng)
    assert all(p.endswith(t.text + " has the first letter:") for p, t in zip(prompts, targets))
    acts, ok = ap.word_activations(lm, "resid_post.9", targets, prompts, batch_size=2)
    assert ok.all()
    for i, prompt in enumerate(prompts):
        ids = lm.tokenizer.encode(prompt)
        assert ids[0] == lm.tokenizer.bos_id and ids[-6] == targets[i].token_id
        alone = np.asarray(lm.activations(jnp.asarray([ids]), "resid_post.9"))[0, len(ids) - 6]
        np.testing.assert_allclose(acts[i], alone, rtol=1e-4, atol=1e-3)


def test_cli_refuses_a_latent_count_out_of_range(tmp_path, capsys):
    from jaxdict.cli import main
    from jaxdict.sae.io import export_saelens
    from jaxdict.sae.params import init_params
    import jax

    cfg = SAEConfig(arch="relu_l1", d_in=640, n_features=32)
    sae = SAE(cfg=cfg, params=init_params(cfg, jax.random.PRNGKey(0)), model="gemma3-270m", hook="resid_post.9")
    folder = export_saelens(sae, tmp_path / "sae")
    assert main(["absorption", str(folder), "--out", str(tmp_path / "out"), "--latents", "33"]) == 1
    assert "--latents 33 out of range; valid: 1..32" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_same_result_in_raw_units_with_the_input_scale_folded_in():
    """An SAE trained on x · s and evaluated on raw x (s folded into W_enc, W_dec, b_dec, as
    load_run does) gives the same absorption: projections use f · ‖W_dec‖, the latents the probes
    read do not change. SAEBench's f · cos would compare latents in training units with a·p in raw
    units, and find no absorption here."""
    from jaxdict.sae.params import fold_input_scale

    s = 0.01
    data = _probe_data(np.random.default_rng(5))
    sae = _sae(True, data.probe_weights[0])
    raw = ProbeData(**{**data.__dict__, "train_acts": data.train_acts / s, "test_acts": data.test_acts / s,
                       "absorb_acts": data.absorb_acts / s, "probe_weights": data.probe_weights * s})
    folded = SAE(cfg=sae.cfg, params=fold_input_scale(sae.params, s), hook=sae.hook, source="folded")
    settings = AbsorptionSettings(hook="resid_post.0")
    want = ab.evaluate_absorption(sae, data, settings)
    got = ab.evaluate_absorption(folded, raw, settings)
    assert got["letters"][0]["num_full_absorption"] == ABSORBED_TEST
    assert [r["main_latents"] for r in got["letters"]] == [r["main_latents"] for r in want["letters"]]
    for key in ("full_absorption_rate", "mean_absorption_fraction", "probe_f1"):
        assert [r[key] for r in got["letters"]] == pytest.approx([r[key] for r in want["letters"]], rel=1e-4), key
