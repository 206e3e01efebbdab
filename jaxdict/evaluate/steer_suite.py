"""Steering suites: JSONL files of prompts with a target and an alternative completion.

Line 1 may be a header object with "suite" (its name) and optionally "description", "prefix"
(the prompting baseline: text put before every prompt) and "neutral_text" (the text on which the
cost, KL to the unsteered model, is measured). Every other line is one prompt:

    {"kind": "yaml-load", "split": "dev", "prompt": "cfg = yaml.",
     "target": "load(f)", "alternative": "safe_load(f)", "pattern": "^load\\("}

`target` is the behaviour steering should move toward (e.g. the unsafe completion), `alternative`
the one it should move away from; `pattern` (optional) is a regular expression searched in the
greedy generated text (the prompt excluded). Dev and test are split by whole kinds: a kind on both
sides is an error, so that no templated sibling of a test prompt ever informs a choice.

Token boundaries: a prompt ending in a space tokenises differently alone than with its completion
attached. `boundary="follow"` scores the completion as its own tokens following the prompt's own
tokens (ids = encode(prompt) + encode(completion)); `boundary="refuse"` refuses any prompt whose
joint tokenisation differs from that, naming its line.
"""
from __future__ import annotations

import dataclasses
import re
from importlib import resources
from pathlib import Path
from typing import Any

from jaxdict.evaluate.json_lines import read_json_lines

BUILTIN = ("unsafe-code", "deprecation")
BOUNDARIES = ("follow", "refuse")
SPLITS = ("dev", "test")
_REQUIRED = ("kind", "split", "prompt", "target", "alternative")
DEFAULT_NEUTRAL = (
    "The library keeps a small cache of recently used values. When the cache is full, the oldest "
    "entry is dropped.\n\ndef total(values):\n    \"\"\"Return the sum of the values.\"\"\"\n"
    "    result = 0\n    for v in values:\n        result += v\n    return result\n\n"
    "The weather was mild, and the train left the station a few minutes late."
)


class SuiteError(ValueError):
    """A suite that cannot be used as written; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Prompt:
    line: int
    kind: str
    split: str
    prompt: str
    target: str
    alternative: str
    pattern: str | None
    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]
    alternative_ids: tuple[int, ...]
    boundary_merges: bool  # the joint tokenisation of prompt + completion differs from ours


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    path: str
    description: str
    prefix: str | None
    neutral_text: str
    prompts: tuple[Prompt, ...]

    def split(self, name: str) -> list[Prompt]:
        return [p for p in self.prompts if p.split == name]

    def kinds(self, split: str) -> list[str]:
        return sorted({p.kind for p in self.prompts if p.split == split})


def suite_path(name_or_path: str) -> Path:
    """A built-in suite name (shipped as package data) or a JSONL path."""
    if name_or_path in BUILTIN:
        return Path(str(resources.files("jaxdict.suites") / f"{name_or_path.replace('-', '_')}.jsonl"))
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"no suite {name_or_path!r}: not a built-in ({', '.join(BUILTIN)}) nor a file")
    return path


def _check_prompt(rec: dict[str, Any], where: str) -> None:
    missing = [k for k in _REQUIRED if k not in rec]
    if missing:
        raise SuiteError(f"{where}: missing field(s) {', '.join(missing)} (each prompt needs {', '.join(_REQUIRED)})")
    for k in _REQUIRED:
        if not isinstance(rec[k], str):
            raise SuiteError(f"{where}: field {k!r} must be a string, got {type(rec[k]).__name__}")
    for k in ("prompt", "target", "alternative", "kind"):
        if not rec[k].strip():
            raise SuiteError(f"{where}: field {k!r} is empty")
    if rec["target"] == rec["alternative"]:
        raise SuiteError(f"{where}: target and alternative are the same text {rec['target']!r}")
    if rec["split"] not in SPLITS:
        raise SuiteError(f"{where}: split {rec['split']!r}; valid: {', '.join(SPLITS)}")
    if rec.get("pattern") is not None:
        try:
            re.compile(rec["pattern"])
        except re.error as err:
            raise SuiteError(f"{where}: pattern {rec['pattern']!r} is not a valid regular expression ({err})") from None


def _tokenise(tok, rec: dict[str, Any], where: str, boundary: str, max_len: int) -> dict[str, Any]:
    prompt_ids = tok.encode(rec["prompt"])
    out: dict[str, Any] = {"prompt_ids": tuple(prompt_ids), "boundary_merges": False}
    for k in ("target", "alternative"):
        ids = tok.encode(rec[k], add_bos=False)
        if not ids:
            raise SuiteError(f"{where}: {k} {rec[k]!r} tokenises to no tokens")
        joint = tok.encode(rec["prompt"] + rec[k])
        if joint != prompt_ids + ids:
            if boundary == "refuse":
                raise SuiteError(
                    f"{where}: the prompt's last tokens merge with its {k} {rec[k]!r} (prompt ending "
                    f"{rec['prompt'][-12:]!r}); fix the prompt or use boundary 'follow', which scores "
                    "the completion's own tokens after the prompt's own tokens")
            out["boundary_merges"] = True
        if len(prompt_ids) + len(ids) > max_len:
            raise SuiteError(f"{where}: prompt + {k} is {len(prompt_ids) + len(ids)} tokens; the context "
                             f"length is {max_len}")
        out[f"{k}_ids"] = tuple(ids)
    return out


def load_suite(name_or_path: str, tokenizer, max_context: int, boundary: str = "follow",
               max_new_tokens: int = 0) -> Suite:
    """Parse and validate a suite; every problem names the file and line."""
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary {boundary!r}; valid: {', '.join(BOUNDARIES)}")
    path = suite_path(name_or_path)
    header: dict[str, Any] = {}
    prompts = []
    kind_split: dict[str, tuple[str, int]] = {}
    for n, where, rec in read_json_lines(path, dict, SuiteError):
        if "suite" in rec:
            if header or prompts:
                raise SuiteError(f"{where}: a header (an object with 'suite') may only be the first line")
            header = rec
            continue
        _check_prompt(rec, where)
        seen = kind_split.setdefault(rec["kind"], (rec["split"], n))
        if seen[0] != rec["split"]:
            raise SuiteError(f"{where}: kind {rec['kind']!r} is in split {rec['split']!r} but line {seen[1]} puts "
                             f"it in {seen[0]!r}; split dev/test by whole kinds")
        ids = _tokenise(tokenizer, rec, where, boundary, max_context - max_new_tokens)
        prompts.append(Prompt(line=n, kind=rec["kind"], split=rec["split"], prompt=rec["prompt"],
                              target=rec["target"], alternative=rec["alternative"],
                              pattern=rec.get("pattern"), **ids))
    if not prompts:
        raise SuiteError(f"{path}: no prompts")
    for s in SPLITS:
        if not any(p.split == s for p in prompts):
            raise SuiteError(f"{path}: no prompt in split {s!r}; a suite needs dev prompts (to choose on) and "
                             "test prompts (to report on)")
    prefix = header.get("prefix")
    if prefix is not None and (not isinstance(prefix, str) or not prefix.strip()):
        raise SuiteError(f"{path}:1: header 'prefix' must be a non-empty string")
    neutral = header.get("neutral_text", DEFAULT_NEUTRAL)
    if not isinstance(neutral, str) or len(tokenizer.encode(neutral)) < 8:
        raise SuiteError(f"{path}:1: header 'neutral_text' must be a text of at least 7 tokens")
    return Suite(name=str(header.get("suite", path.stem)), path=str(path),
                 description=str(header.get("description", "")), prefix=prefix, neutral_text=neutral,
                 prompts=tuple(prompts))
