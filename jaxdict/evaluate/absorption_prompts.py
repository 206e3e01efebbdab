"""Words, in-context prompts and model activations for the first-letter absorption metric.

Our implementation of the data side of SAEBench's `absorption_first_letter` eval (Karvonen et al.
2025, github.com/adamkarvonen/SAEBench, sae_bench/evals/absorption/), itself David Chanin's metric
from "A is for Absorption" (Chanin et al. 2024, arXiv:2409.14507):

- the vocabulary is every single token that is, after an optional leading space, only ASCII letters
  (SAEBench `vocab.get_alpha_tokens`);
- each word gets an in-context prompt of `ICL_EXAMPLES` other words answered with their capitalised
  first letter, one per line, a newline in front of the first (SAEBench `prompting.create_icl_prompt`
  with `prepend_separator_to_first_example=True`), then the word itself with the question:
      "\\n{w1} has the first letter: W\\n...\\n{w10} has the first letter: X\\n{word} has the first letter:"
- the activation is read at the word's own token, `WORD_TOKEN_POS` = -6 from the end (the five
  tokens " has", " the", " first", " letter", ":" follow it; SAEBench `eval_config.prompt_token_pos`).

SAEBench uses the whole alphabetic vocabulary (80 % train / 20 % test words); `sample_words` can draw
a random subset of it for machines where ~140,000 forward passes are too slow.
"""
from __future__ import annotations

import dataclasses
import string
from typing import Callable, Sequence

import numpy as np

LETTERS = string.ascii_lowercase
# SAEBench eval_config.prompt_template / prompt_token_pos (defaults of AbsorptionEvalConfig).
PROMPT_TEMPLATE = "{word} has the first letter:"
WORD_TOKEN_POS = -6
# SAEBench probing.create_dataset_probe_training and the absorption calculator: max_icl_examples=10.
ICL_EXAMPLES = 10
# SAEBench probing.create_dataset_probe_training: train_test_fraction=0.8 (of the shuffled vocabulary).
TRAIN_FRACTION = 0.8
SPACE_MARK = "\u2581"  # SentencePiece's visible space


@dataclasses.dataclass(frozen=True)
class Word:
    text: str  # as the tokenizer writes it, leading space included (" cat" or "cat")
    token_id: int

    @property
    def letter(self) -> int:
        """Index in LETTERS of the first letter (SAEBench prompting.first_letter, lower-cased)."""
        return LETTERS.index(self.text.strip()[0].lower())

    @property
    def answer(self) -> str:
        """The in-context answer: a space and the capitalised first letter (" C")."""
        return " " + self.text.strip()[0].upper()


def alpha_vocabulary(tokenizer) -> list[Word]:
    """Every token that is an optional leading space followed by one or more ASCII letters."""
    allowed = set(string.ascii_letters)
    words = []
    for token_id in range(tokenizer.vocab_size):
        text = tokenizer.id_to_piece(token_id).replace(SPACE_MARK, " ")
        body = text[1:] if text.startswith(" ") else text
        if body and all(c in allowed for c in body):
            words.append(Word(text, token_id))
    return words


def sample_words(words: Sequence[Word], n_words: int | None, rng: np.random.Generator) -> list[Word]:
    """All of `words` (n_words None, SAEBench) or a uniform random subset of n_words of them."""
    if n_words is None or n_words >= len(words):
        return list(words)
    if n_words < 2:
        raise ValueError(f"n_words = {n_words}: need at least 2 words (some to train, some to test)")
    pick = np.sort(rng.choice(len(words), size=n_words, replace=False))
    return [words[i] for i in pick]


def split_words(words: Sequence[Word], rng: np.random.Generator) -> tuple[list[Word], list[Word]]:
    """Shuffle, then the first TRAIN_FRACTION to train and the rest to test (SAEBench probing)."""
    order = rng.permutation(len(words))
    cut = int(len(words) * TRAIN_FRACTION)
    return [words[i] for i in order[:cut]], [words[i] for i in order[cut:]]


def icl_prompt(word: Word, pool: Sequence[Word], rng: np.random.Generator) -> str:
    """The word's prompt with ICL_EXAMPLES random examples from `pool`, never the word itself."""
    if len(pool) < ICL_EXAMPLES + 1:
        raise ValueError(f"the example pool has {len(pool)} words; need at least {ICL_EXAMPLES + 1}")
    # ICL_EXAMPLES + 1 distinct draws, the word dropped if drawn: a uniform random ordered set of
    # ICL_EXAMPLES pool words other than `word` (what SAEBench's resample-until-clean gives).
    drawn = [pool[i] for i in rng.choice(len(pool), size=ICL_EXAMPLES + 1, replace=False)]
    examples = [w for w in drawn if w.text != word.text][:ICL_EXAMPLES]
    lines = [PROMPT_TEMPLATE.format(word=w.text) + w.answer for w in examples]
    return "\n" + "\n".join(lines) + "\n" + PROMPT_TEMPLATE.format(word=word.text)


def prompts_for(words: Sequence[Word], pool: Sequence[Word], rng: np.random.Generator) -> list[str]:
    return [icl_prompt(w, pool, rng) for w in words]


def _pad_batch(rows: Sequence[Sequence[int]], batch: int, pad_id: int, quantum: int = 32
               ) -> tuple[np.ndarray, np.ndarray]:
    """ids/mask [batch, S] right-padded; missing rows repeat row 0 (a fixed shape: one compile)."""
    S = -(-max(len(r) for r in rows) // quantum) * quantum
    ids = np.full((batch, S), pad_id, np.int32)
    mask = np.zeros((batch, S), bool)
    for i in range(batch):
        r = rows[i] if i < len(rows) else rows[0]
        ids[i, :len(r)] = r
        mask[i, :len(r)] = True
    return ids, mask


def word_activations(lm, hook: str, words: Sequence[Word], prompts: Sequence[str], batch_size: int = 16,
                     progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(acts float32 [n, d] at each prompt's word token, ok bool [n]).

    ok[i] is False when the token WORD_TOKEN_POS from the end of prompt i is not word i's own token
    (the word merged with a neighbour); such rows hold zeros and must be dropped. SAEBench assumes
    this position without checking.
    """
    import jax.numpy as jnp

    if len(words) != len(prompts):
        raise ValueError(f"{len(words)} words but {len(prompts)} prompts")
    tok = lm.tokenizer
    encoded = tok.encode_batch(list(prompts), add_bos=True)  # BOS first, as TransformerLens does
    d = lm.config.d_model
    acts = np.zeros((len(words), d), np.float32)
    ok = np.array([len(ids) >= -WORD_TOKEN_POS and ids[WORD_TOKEN_POS] == w.token_id
                   for ids, w in zip(encoded, words)], bool)
    for start in range(0, len(words), batch_size):
        rows = encoded[start:start + batch_size]
        ids, mask = _pad_batch(rows, batch_size, tok.pad_id)
        pos = np.array([len(r) + WORD_TOKEN_POS for r in rows] + [0] * (batch_size - len(rows)), np.int32)
        out = lm.activations(jnp.asarray(ids), hook, jnp.asarray(mask))
        picked = np.asarray(out[jnp.arange(batch_size), jnp.asarray(pos)], np.float32)
        acts[start:start + len(rows)] = picked[:len(rows)]
        if progress is not None:
            progress(len(rows))
    acts[~ok] = 0.0
    return acts, ok
