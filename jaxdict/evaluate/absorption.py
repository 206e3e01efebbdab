"""Feature absorption of an SAE: SAEBench's first-letter metric (`absorption_first_letter`).

The metric is David Chanin's (Chanin et al. 2024, "A is for Absorption", arXiv:2409.14507) with the
absorption fraction of Demian Till, as SAEBench implements it (Karvonen et al. 2025,
github.com/adamkarvonen/SAEBench, sae_bench/evals/absorption/). This is our own implementation:

1. A ground-truth logistic probe per first letter on the model's activations at the word token
   (`absorption_data`); letters whose probe has test F1 ≤ `MIN_PROBE_F1` are not scored.
2. k-sparse probing on the SAE's latents picks each letter's *main latents* (`absorption_probes`).
3. For every test word whose letter's probe fires (a probe true positive), on a fresh in-context
   prompt: with p the unit probe direction, a the residual activation and, per latent i, its
   activation f_i and cos_i = cos(W_dec[i], p), the latent's probe projection is f_i · cos_i.
   - *absorption fraction*: the part of a·p that latents other than the main ones carry (at most
     `MAX_ABSORBING_LATENTS` of them, each with cos ≥ `FRACTION_PROBE_COS`), if they carry at least
     `PROJECTION_PROPORTION` of a·p (the exact rule is in `absorption_scores`);
   - *full absorption*: no main latent fires, and the latent with the largest probe projection has
     cos ≥ `FULL_PROBE_COS` and carries at least `PROJECTION_PROPORTION` of a·p.
4. Per letter: sums / number of probe true positives; the SAE's scores are the means over letters.

Units. The k-sparse probes read the latents f as the SAE's encode returns them, as SAEBench reads
`sae.encode` (our export to SAELens returns the same f). SAEBench's probe projection f_i · cos_i is
the latent's share of the reconstruction's projection on the probe only when decoder rows have unit
norm; ours are stored in raw activation units with the training input scale folded into W_dec
(sae.params.fold_input_scale: rows of norm 1/input_scale), so the projections use f_i · ‖W_dec[i]‖
· cos_i, in the units of a·p. With unit rows both are SAEBench's. The scale of f matters to the
probes (L1 and L2 penalties act on weights of a fixed size): with f · ‖W_dec‖ (~240× larger here)
the L1 probe is effectively unpenalised and ranks latents that fire on one or two training words.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxdict.evaluate import absorption_probes as probes
from jaxdict.evaluate.absorption_data import AbsorptionSettings, ProbeData
from jaxdict.evaluate.absorption_prompts import LETTERS

# SAEBench feature_absorption.py module constants (their feature_absorption_calculator defaults).
FULL_PROBE_COS = 0.025  # FULL_ABSORPTION_PROBE_COS_THRESHOLD
FRACTION_PROBE_COS = 0.1  # ABSORPTION_FRACTION_PROBE_COS_THRESHOLD
PROJECTION_PROPORTION = 0.4  # ABSORPTION_PROBE_PROJECTION_PROPORTION_THRESHOLD
MAX_ABSORBING_LATENTS = 3  # ABSORPTION_FRACTION_MAX_ABSORBING_LATENTS
MAIN_FIRED_EPS = 1e-8  # feature_absorption_calculator.EPS: a main latent "fires" above this
# SAEBench eval_config: min_GT_probe_f1 = 0.6, min_feats_for_eval = 20.
MIN_PROBE_F1 = 0.6
MIN_LETTERS = 20


def sae_latents(sae, acts: np.ndarray, latent_limit: int | None = None, rows_per_batch: int = 1024
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(f float32 [n, F'] as sae.encode returns them, ‖W_dec‖ float32 [F'], unit decoder rows
    float32 [F', d]) of latents 0..F'-1.

    latent_limit: keep only the first that many latents, i.e. the codes of a Matryoshka prefix as
    the inference code truncated to it (per-latent thresholds, so the same as that prefix alone).
    """
    n_features = sae.n_features
    limit = n_features if latent_limit is None else int(latent_limit)
    if not 1 <= limit <= n_features:
        raise ValueError(f"latent limit {latent_limit} out of range; valid: 1..{n_features}")
    w_dec = np.asarray(sae.params.W_dec, np.float32)[:limit]
    norms = np.linalg.norm(w_dec, axis=1)
    unit = np.divide(w_dec, norms[:, None], out=np.zeros_like(w_dec), where=norms[:, None] > 0)
    out = np.empty((len(acts), limit), np.float32)
    for start in range(0, len(acts), rows_per_batch):
        f = np.asarray(sae.encode(np.asarray(acts[start:start + rows_per_batch], np.float32)), np.float32)
        out[start:start + rows_per_batch] = f[:, :limit]
    return out, norms, unit


def absorption_scores(acts: np.ndarray, latents: np.ndarray, probe_cos: np.ndarray, main: list[int],
                      probe_dir: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(absorption fraction float [n], full absorption bool [n]) of n probe-true-positive rows.

    acts [n, d] residual activations; latents [n, F] activations (decoder norms folded in);
    probe_cos [F] cosine of each decoder row with the probe; main: the letter's main latents;
    probe_dir [d] the probe weights (normalised here). SAEBench
    FeatureAbsorptionCalculator.calculate_absorption and _is_full_absorption, vectorised.
    """
    if not main:
        raise ValueError("no main latents: the letter has no k-sparse probe")
    p = np.asarray(probe_dir, np.float64)
    p = p / np.linalg.norm(p)
    act_proj = np.asarray(acts, np.float64) @ p  # [n]
    proj = np.asarray(latents, np.float64) * np.asarray(probe_cos, np.float64)[None, :]  # [n, F]
    is_main = np.zeros(proj.shape[1], bool)
    is_main[main] = True
    main_proj = proj[:, is_main].sum(axis=1)

    # Absorption fraction: up to MAX_ABSORBING_LATENTS non-main latents aligned with the probe.
    candidate = (~is_main)[None, :] & (probe_cos >= FRACTION_PROBE_COS)[None, :] & (proj > 0)
    pos = np.where(candidate, proj, 0.0)
    m = min(MAX_ABSORBING_LATENTS, pos.shape[1])
    absorbers = -np.partition(-pos, m - 1, axis=1)[:, :m].sum(axis=1)
    safe = np.where(act_proj != 0, act_proj, 1.0)
    absorber_share = np.where(act_proj != 0, absorbers / safe, 0.0)
    unaccounted = act_proj - main_proj
    absorbed = np.minimum(absorbers, unaccounted)
    partial = np.clip(absorbed / np.where(absorbed + main_proj != 0, absorbed + main_proj, 1.0), 0.0, 1.0)
    fraction = np.where((main_proj >= act_proj) | (absorber_share < PROJECTION_PROPORTION), 0.0,
                        np.where(main_proj <= 0.0, 1.0, partial))

    # Full absorption: main latents silent, one probe-aligned latent carries the projection.
    main_silent = np.all(np.asarray(latents)[:, is_main] < MAIN_FIRED_EPS, axis=1)
    top = np.argmax(proj, axis=1)
    top_proj = proj[np.arange(len(top)), top]
    top_share = np.where(act_proj > 0, top_proj / np.where(act_proj > 0, act_proj, 1.0), 0.0)
    full = (main_silent & (probe_cos[top] >= FULL_PROBE_COS) & (act_proj > 0)
            & (top_share >= PROJECTION_PROPORTION))
    return fraction, full


def _letter_row(letter: int, data: ProbeData, test_scores: np.ndarray, ks: probes.KSparseResult,
                absorb_latents: np.ndarray, probe_cos_all: np.ndarray) -> dict[str, Any]:
    y = data.test_letters == letter
    fires = test_scores[:, letter] > 0
    probe_f1 = probes.f1_score(y, fires)
    main = probes.main_latents(ks, letter)
    tp = y & fires
    row: dict[str, Any] = {
        "letter": LETTERS[letter], "probe_f1": probe_f1, "n_train": int((data.train_letters == letter).sum()),
        "n_test": int(y.sum()), "num_probe_true_positives": int(tp.sum()), "main_latents": main,
        "num_split_features": len(main), "k_sparse_f1": [None if not np.isfinite(v) else float(v)
                                                        for v in ks.f1[letter]],
        "scored": bool(probe_f1 > MIN_PROBE_F1 and main and tp.any()),
    }
    if main and tp.any():
        fraction, full = absorption_scores(data.absorb_acts[tp], absorb_latents[tp], probe_cos_all[letter],
                                           main, data.probe_weights[letter])
        n = int(tp.sum())
        row.update(mean_absorption_fraction=float(fraction.sum() / n), num_full_absorption=int(full.sum()),
                   full_absorption_rate=float(full.sum() / n))
    return row


def evaluate_absorption(sae, data: ProbeData, settings: AbsorptionSettings,
                        latent_limit: int | None = None) -> dict[str, Any]:
    """The SAE's absorption result (what absorption.json holds)."""
    if data.train_acts.shape[1] != sae.d_in:
        raise ValueError(f"SAE d_in={sae.d_in} but the cached activations have width {data.train_acts.shape[1]}")
    train_latents, _, unit_dec = sae_latents(sae, data.train_acts, latent_limit)
    test_latents, _, _ = sae_latents(sae, data.test_acts, latent_limit)
    absorb_latents, norms, _ = sae_latents(sae, data.absorb_acts, latent_limit)
    absorb_latents *= norms  # in the units of the residual stream (module docstring)
    steps = settings.steps_per_epoch(probes.SPARSE_BATCH, data.n_vocabulary)
    l1_probe = probes.train_letter_probes(
        train_latents, data.train_letters, len(LETTERS), batch_size=probes.SPARSE_BATCH,
        epochs=probes.SPARSE_EPOCHS, lr=probes.SPARSE_LR, end_lr=probes.SPARSE_END_LR,
        weight_decay=probes.SPARSE_WEIGHT_DECAY, l1=probes.SPARSE_L1, seed=settings.seed, steps_per_epoch=steps)
    ks = probes.k_sparse_probes(train_latents, data.train_letters, test_latents, data.test_letters,
                                len(LETTERS), l1_probe)
    p = data.probe_weights / np.linalg.norm(data.probe_weights, axis=1, keepdims=True)
    probe_cos_all = p @ unit_dec.T  # [26, F']
    test_scores = data.probe.scores(data.test_acts)
    rows = [_letter_row(i, data, test_scores, ks, absorb_latents, probe_cos_all) for i in range(len(LETTERS))]
    scored = [r for r in rows if r["scored"]]
    result: dict[str, Any] = {
        "sae": sae.source, "step": sae.step, "model": sae.model, "hook": settings.hook,
        "n_latents": unit_dec.shape[0], "latent_limit": latent_limit,
        "n_vocabulary": data.n_vocabulary, "n_train_words": len(data.train_acts),
        "n_test_words": len(data.test_acts), "n_dropped_words": data.n_dropped,
        "n_letters_scored": len(scored),
        "probe_steps_per_epoch": settings.steps_per_epoch(probes.PROBE_BATCH, data.n_vocabulary),
        "sparse_probe_steps_per_epoch": steps,
        "settings": _settings_dict(settings), "letters": rows,
    }
    enough = len(scored) >= MIN_LETTERS
    for key, field in (("mean_absorption_fraction_score", "mean_absorption_fraction"),
                       ("mean_full_absorption_score", "full_absorption_rate"),
                       ("mean_num_split_features", "num_split_features")):
        values = np.array([r[field] for r in scored], np.float64)
        # The same mean without SAEBench's MIN_LETTERS gate, for comparing SAEs on one word set
        # (the scored letters depend on the probe only, so every SAE gets the same letters).
        result["scored_letters_" + key] = float(values.mean()) if len(values) else None
        result[key] = float(values.mean()) if enough else None
        result["std_dev_" + key.removeprefix("mean_")] = float(values.std(ddof=1)) if enough else None
    if not enough:
        result["not_scored_reason"] = (f"only {len(scored)} letters have a probe F1 > {MIN_PROBE_F1}; "
                                       f"SAEBench needs {MIN_LETTERS}")
    return result


def _settings_dict(settings: AbsorptionSettings) -> dict[str, Any]:
    from jaxdict.evaluate import absorption_prompts as ap

    return {**dataclasses.asdict(settings), "prompt_template": ap.PROMPT_TEMPLATE,
            "word_token_pos": ap.WORD_TOKEN_POS, "icl_examples": ap.ICL_EXAMPLES, "max_k": probes.MAX_K,
            "f1_jump": probes.F1_JUMP, "full_probe_cos": FULL_PROBE_COS, "fraction_probe_cos": FRACTION_PROBE_COS,
            "projection_proportion": PROJECTION_PROPORTION, "max_absorbing_latents": MAX_ABSORBING_LATENTS,
            "min_probe_f1": MIN_PROBE_F1, "min_letters": MIN_LETTERS}


def markdown_summary(result: dict[str, Any]) -> str:
    def num(v, fmt="{:.4f}"):
        return "—" if v is None else fmt.format(v)

    lines = [f"# Absorption (SAEBench first-letter) — {result['sae']} step {result['step']}", "",
             f"hook {result['hook']}, latents {result['n_latents']}"
             + (f" (first {result['latent_limit']})" if result["latent_limit"] else "")
             + f"; words: {result['n_train_words']} train / {result['n_test_words']} test of "
             f"{result['n_vocabulary']} alphabetic tokens ({result['n_dropped_words']} dropped); "
             f"{result['n_letters_scored']} letters scored", "",
             f"- mean absorption fraction: {num(result['mean_absorption_fraction_score'])} "
             f"(sd over letters {num(result['std_dev_absorption_fraction_score'])})",
             f"- mean full-absorption rate: {num(result['mean_full_absorption_score'])} "
             f"(sd {num(result['std_dev_full_absorption_score'])})",
             f"- mean number of main latents: {num(result['mean_num_split_features'], '{:.2f}')}", ""]
    if result.get("not_scored_reason"):
        lines += [f"Not scored: {result['not_scored_reason']}. Over the {result['n_letters_scored']} letters "
                  "that pass the probe F1 gate (not a SAEBench score): absorption fraction "
                  f"{num(result['scored_letters_mean_absorption_fraction_score'])}, full-absorption rate "
                  f"{num(result['scored_letters_mean_full_absorption_score'])}", ""]
    lines += ["| letter | probe F1 | test words | probe TP | main latents | absorption fraction | full absorption |",
              "|---|---|---|---|---|---|---|"]
    for r in result["letters"]:
        mark = "" if r["scored"] else " (not scored)"
        lines.append(f"| {r['letter']}{mark} | {r['probe_f1']:.3f} | {r['n_test']} | {r['num_probe_true_positives']} "
                     f"| {r['num_split_features']} | {num(r.get('mean_absorption_fraction'))} "
                     f"| {num(r.get('full_absorption_rate'))} |")
    return "\n".join(lines) + "\n"


def write_absorption(result: dict[str, Any], out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "absorption.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "absorption.md").write_text(markdown_summary(result))
    return out
