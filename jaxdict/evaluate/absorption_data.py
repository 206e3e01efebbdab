"""The SAE-independent half of the first-letter absorption metric: words, their activations at the
hook and the ground-truth first-letter probe. Computed once per (model, hook, settings) and cached
in one .npz, so that several SAEs of the same hook share one set of forward passes (SAEBench caches
its probe and probe data per model and layer the same way, common.load_or_train_probe).

Only the activations are cached; the probe is retrained from them (seeded, a few seconds).

Three sets of prompts (SAEBench): train words with examples drawn from the train words, test words
with examples from the test words (probing.create_dataset_probe_training), and the test words again
with examples from all words, whose activations the absorption criterion reads
(feature_absorption.run_feature_absortion_experiment builds its calculator on the whole vocabulary).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxdict.evaluate import absorption_prompts as ap
from jaxdict.evaluate import absorption_probes as probes

# SAEBench AbsorptionEvalConfig.random_seed.
DEFAULT_SEED = 42
# Fewest words whose test split holds ICL_EXAMPLES + 1 (a word and its examples).
MIN_WORDS = next(n for n in range(2, 10_000) if n - int(n * ap.TRAIN_FRACTION) > ap.ICL_EXAMPLES)


@dataclasses.dataclass(frozen=True)
class AbsorptionSettings:
    """n_words None: every alphabetic token (SAEBench); else a random subset of that many.
    vocabulary_steps: an epoch of either probe is as many Adam steps (of SAEBench's batch size) as
    one pass over the whole vocabulary's train words would be, as in SAEBench; on a subset of
    n_words a literal pass would train the probes ~|V|/n_words times less. False: one pass."""

    hook: str
    n_words: int | None = None
    seed: int = DEFAULT_SEED
    lm_batch_size: int = 16
    vocabulary_steps: bool = True

    def __post_init__(self) -> None:
        if self.n_words is not None and self.n_words < MIN_WORDS:
            raise ValueError(f"--words = {self.n_words}: need at least {MIN_WORDS} (the test split, "
                             f"{1 - ap.TRAIN_FRACTION:.0%} of them, draws its {ap.ICL_EXAMPLES} in-context "
                             "examples from itself)")
        if self.lm_batch_size < 1:
            raise ValueError(f"lm_batch_size = {self.lm_batch_size} must be >= 1")

    def steps_per_epoch(self, batch: int, n_vocabulary: int) -> int | None:
        """Adam steps per probe epoch (None: one pass over the data; see the class docstring)."""
        if not self.vocabulary_steps:
            return None
        return max(1, math.ceil(int(n_vocabulary * ap.TRAIN_FRACTION) / batch))

    def cache_key(self, model: str) -> dict[str, Any]:
        """What the cached activations and probe depend on."""
        return {"model": model, "hook": self.hook, "n_words": self.n_words, "seed": self.seed,
                "template": ap.PROMPT_TEMPLATE, "word_token_pos": ap.WORD_TOKEN_POS,
                "icl_examples": ap.ICL_EXAMPLES, "format": 1}


@dataclasses.dataclass(frozen=True)
class ProbeData:
    """Words (texts, token ids, letters), activations and the ground-truth probe."""

    train_words: np.ndarray  # str [n_train]
    train_letters: np.ndarray  # int [n_train]
    train_acts: np.ndarray  # float32 [n_train, d]
    test_words: np.ndarray  # str [n_test]
    test_letters: np.ndarray  # int [n_test]
    test_acts: np.ndarray  # float32 [n_test, d]: prompts with test-word examples (probe F1)
    absorb_acts: np.ndarray  # float32 [n_test, d]: prompts with examples from all words
    probe_weights: np.ndarray  # float32 [26, d]
    probe_bias: np.ndarray  # float32 [26]
    n_vocabulary: int  # alphabetic tokens in the tokenizer
    n_dropped: int  # sampled words whose prompt did not keep the word as one token at WORD_TOKEN_POS

    ACTIVATION_FIELDS = ("train_words", "train_letters", "train_acts", "test_words", "test_letters",
                         "test_acts", "absorb_acts", "n_vocabulary", "n_dropped")

    @property
    def probe(self) -> probes.LinearProbes:
        return probes.LinearProbes(self.probe_weights, self.probe_bias)


def train_ground_truth_probe(train_acts: np.ndarray, train_letters: np.ndarray, n_vocabulary: int,
                             settings: AbsorptionSettings) -> probes.LinearProbes:
    """SAEBench's first-letter probe (common.train_and_save_probes constants) on the train words."""
    return probes.train_letter_probes(
        train_acts, train_letters, len(ap.LETTERS), batch_size=probes.PROBE_BATCH,
        epochs=probes.PROBE_EPOCHS, lr=probes.PROBE_LR, end_lr=probes.PROBE_END_LR,
        weight_decay=probes.PROBE_WEIGHT_DECAY, seed=settings.seed,
        steps_per_epoch=settings.steps_per_epoch(probes.PROBE_BATCH, n_vocabulary))


def build_probe_data(lm, settings: AbsorptionSettings,
                     progress: Callable[[str, int, int], None] | None = None) -> ProbeData:
    """Sample and split the words, run the LM on the three prompt sets, train the probe."""
    rng = np.random.default_rng(settings.seed)
    vocabulary = ap.alpha_vocabulary(lm.tokenizer)
    words = ap.sample_words(vocabulary, settings.n_words, rng)
    train, test = ap.split_words(words, rng)
    sets = {"train": (train, train), "test": (test, test), "absorb": (test, train + test)}
    acts, ok = {}, {}
    for name, (targets, pool) in sets.items():
        prompts = ap.prompts_for(targets, pool, rng)
        done = [0]

        def tick(n, name=name, total=len(targets), done=done):
            done[0] += n
            if progress is not None:
                progress(name, done[0], total)

        acts[name], ok[name] = ap.word_activations(lm, settings.hook, targets, prompts,
                                                   settings.lm_batch_size, tick)
    keep_test = ok["test"] & ok["absorb"]
    keep_train = ok["train"]
    train_letters = np.array([w.letter for w in train], np.int64)[keep_train]
    probe = train_ground_truth_probe(acts["train"][keep_train], train_letters, len(vocabulary), settings)
    return ProbeData(
        train_words=np.array([w.text for w in train], dtype=str)[keep_train], train_letters=train_letters,
        train_acts=acts["train"][keep_train],
        test_words=np.array([w.text for w in test], dtype=str)[keep_test],
        test_letters=np.array([w.letter for w in test], np.int64)[keep_test],
        test_acts=acts["test"][keep_test], absorb_acts=acts["absorb"][keep_test],
        probe_weights=probe.weights, probe_bias=probe.bias, n_vocabulary=len(vocabulary),
        n_dropped=int((~keep_train).sum() + (~keep_test).sum()))


def save_probe_data(path: str | Path, data: ProbeData, key: dict[str, Any]) -> Path:
    """The words and activations (not the probe) in one .npz, with the settings they depend on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.asarray(getattr(data, name)) for name in ProbeData.ACTIVATION_FIELDS}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, key=np.array(json.dumps(key, sort_keys=True)), **arrays)
    tmp.replace(path)
    return path


def load_probe_data(path: str | Path, key: dict[str, Any], settings: AbsorptionSettings) -> ProbeData:
    """The cached activations with the probe retrained on them, or ValueError if they were made
    with other settings (naming them)."""
    with np.load(Path(path)) as f:
        stored = json.loads(str(f["key"]))
        if stored != key:
            diff = {k: (stored.get(k), key.get(k)) for k in set(stored) | set(key) if stored.get(k) != key.get(k)}
            raise ValueError(f"absorption cache {path} was made with other settings (cached, wanted): {diff}; "
                             "give another --cache path or delete it")
        fields = {}
        for name in ProbeData.ACTIVATION_FIELDS:
            value = f[name]
            fields[name] = int(value) if value.ndim == 0 else value
    probe = train_ground_truth_probe(fields["train_acts"], fields["train_letters"], fields["n_vocabulary"], settings)
    return ProbeData(**fields, probe_weights=probe.weights, probe_bias=probe.bias)


def probe_data_for(lm, settings: AbsorptionSettings, cache: str | Path | None = None,
                   progress: Callable[[str, int, int], None] | None = None) -> ProbeData:
    """From `cache` when it exists (and matches), else built (and written there when given)."""
    key = settings.cache_key(lm.name)
    if cache is not None and Path(cache).is_file():
        return load_probe_data(cache, key, settings)
    data = build_probe_data(lm, settings, progress)
    if cache is not None:
        save_probe_data(cache, data, key)
    return data
