"""Steering suites: errors name the line; token boundaries followed or refused; built-in suites
are well formed; test prompts never influence a choice; `jaxdict steer-eval` and `jaxdict find`
end to end on a tiny model."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jaxdict.evaluate.steer_eval import Settings, run_steer_eval, select_on_dev
from jaxdict.evaluate.steer_suite import SuiteError, load_suite
from test_steer_eval import rows, sae_with_max, write_suite
from tiny_lm import tiny_lm


def tok():
    return tiny_lm().tokenizer


@pytest.mark.parametrize("bad,match", [
    ({"kind": "a", "split": "dev", "prompt": "x", "target": "1"}, r"s\.jsonl:3: missing field\(s\) alternative"),
    ({"kind": "a", "split": "dev", "prompt": "x", "target": "", "alternative": "2"}, r"s\.jsonl:3: field 'target' is empty"),
    ({"kind": "a", "split": "train", "prompt": "x", "target": "1", "alternative": "2"}, r":3: split 'train'; valid: dev, test"),
    ({"kind": "c", "split": "dev", "prompt": "x", "target": "1", "alternative": "2"}, r"s\.jsonl:6: kind 'c' is in split 'test' but line 3 puts it in 'dev'"),
    ({"kind": "a", "split": "dev", "prompt": "x " * 200, "target": "1", "alternative": "2"}, r":3: prompt \+ target is \d+ tokens; the context length is 128"),
    ({"kind": "a", "split": "dev", "prompt": "x", "target": "1", "alternative": "2", "pattern": "("}, r":3: pattern '\(' is not a valid"),
])
def test_bad_suite_names_the_line(tmp_path, bad, match):
    r = rows()
    path = write_suite(tmp_path / "s.jsonl", r[:2] + [bad] + r[2:])  # the bad prompt is line 3
    with pytest.raises(SuiteError, match=match):
        load_suite(str(path), tok(), 128)


def test_suite_needs_both_splits_and_json(tmp_path):
    with pytest.raises(SuiteError, match="no prompt in split 'test'"):
        load_suite(str(write_suite(tmp_path / "s.jsonl", rows()[:4])), tok(), 128)
    (tmp_path / "b.jsonl").write_text('{"kind": "a",\n')
    with pytest.raises(SuiteError, match=r"b\.jsonl:1: not valid JSON"):
        load_suite(str(tmp_path / "b.jsonl"), tok(), 128)
    with pytest.raises(FileNotFoundError, match="not a built-in"):
        load_suite(str(tmp_path / "missing.jsonl"), tok(), 128)


def test_token_boundary_follow_and_refuse(tmp_path):
    t = tok()
    # "return " alone ends in a space token; with "x" attached the space merges into "▁x".
    assert t.encode("return x") != t.encode("return ") + t.encode("x", add_bos=False)
    r = rows()
    r[0] = {**r[0], "prompt": "return ", "target": "x", "alternative": "y"}
    path = write_suite(tmp_path / "s.jsonl", r)
    s = load_suite(str(path), t, 128, boundary="follow")
    p = s.prompts[0]
    assert p.boundary_merges and p.prompt_ids == tuple(t.encode("return "))
    assert p.target_ids == tuple(t.encode("x", add_bos=False))  # scored after the prompt's own tokens
    assert not s.prompts[1].boundary_merges
    with pytest.raises(SuiteError, match=r"s\.jsonl:1: the prompt's last tokens merge with its target 'x'"):
        load_suite(str(path), t, 128, boundary="refuse")


@pytest.mark.parametrize("name,kinds", [("unsafe-code", 10), ("deprecation", 5)])
def test_builtin_suites(name, kinds):
    s = load_suite(name, tok(), 32768)
    assert len({p.kind for p in s.prompts}) == kinds and s.prefix
    counts = {k: sum(p.kind == k for p in s.prompts) for k in {p.kind for p in s.prompts}}
    assert min(counts.values()) >= 5
    assert not set(s.kinds("dev")) & set(s.kinds("test"))
    if name == "unsafe-code":
        assert len(s.prompts) >= 48 and len(s.kinds("test")) >= 4


def test_test_prompts_never_influence_choices(tmp_path):
    """Two suites with the same dev prompts and opposite test prompts: same feature, strength and
    DiffMean; and select_on_dev refuses a test prompt."""
    lm, sae = tiny_lm(), sae_with_max()
    settings = Settings(strengths=(1.0, 3.0), n_candidates=3, max_new_tokens=2)
    a = load_suite(str(write_suite(tmp_path / "a.jsonl", rows((" yes", " no")))), lm.tokenizer, 128)
    b = load_suite(str(write_suite(tmp_path / "b.jsonl", rows((" no way", " sure thing")))), lm.tokenizer, 128)
    ra = run_steer_eval(lm, sae, a, settings, log=lambda s: None)
    rb = run_steer_eval(lm, sae, b, settings, log=lambda s: None)
    for key in ("feature", "strength", "diffmean_norm", "ranking", "candidates"):
        assert ra["selection"][key] == rb["selection"][key]
    assert [m["chosen_strength"] for m in ra["methods"]] == [m["chosen_strength"] for m in rb["methods"]]
    assert ra["methods"][3]["feature"] == rb["methods"][3]["feature"]  # random feature
    assert ra["methods"][0]["points"][0]["test"]["shifts"] != rb["methods"][0]["points"][0]["test"]["shifts"]
    with pytest.raises(ValueError, match="dev prompts only"):
        select_on_dev(lm, sae, a.prompts, [2, 3, 4], settings)


def test_steer_eval_and_find_cli(tmp_path, monkeypatch, capsys):
    import jaxdict.lm
    from jaxdict.cli import main
    from jaxdict.sae.io import export_saelens

    lm = tiny_lm()  # built before load is patched: it takes the real tokenizer through load
    monkeypatch.setattr(jaxdict.lm, "load", lambda name: lm)
    sae = sae_with_max()
    folder = export_saelens(sae, tmp_path / "sae")
    suite = write_suite(tmp_path / "s.jsonl", rows(), {"suite": "tiny", "prefix": "# yes\n"})
    out = tmp_path / "eval"
    rc = main(["steer-eval", str(suite), "--sae", str(folder), "--out", str(out), "--strength", "-2", "1", "4",
               "--candidates", "2", "--max-new-tokens", "2"])
    assert rc == 0, capsys.readouterr().err
    r = json.loads((out / "steer_eval.json").read_text())
    assert [m["name"] for m in r["methods"]] == ["feature-clamp", "feature-add", "diffmean", "random-feature",
                                                 "random-direction", "prompting"]
    assert len(r["methods"][0]["points"]) == 3 and len(r["methods"][-1]["points"]) == 1
    assert set(r["methods"][0]["matched_kl"]) == {"0.1", "0.3", "1"}
    md = (out / "steer_eval.md").read_text()
    assert "## Verdict" in md and "Before and after" in md and (out / "steer_eval.png").stat().st_size > 1000
    rc = main(["steer-eval", str(tmp_path / "nope.jsonl"), "--sae", str(folder), "--out", str(out)])
    assert rc == 1 and "not a built-in" in capsys.readouterr().err
    rc = main(["find", str(folder), "--out", str(tmp_path / "find"), "--no-dashboard",
               "--positive", "x = [[1]]", "--positive", "y = [[1]] + 1", "--negative", "x = [[2]]", "--top", "5"])
    assert rc == 0, capsys.readouterr().err
    hits = json.loads((tmp_path / "find" / "find.json").read_text())["features"]
    assert len(hits) == 5 and hits[0]["auroc"] >= hits[-1]["auroc"]
    rc = main(["find", str(folder), "--out", str(tmp_path / "find"), "--positive", "x"])
    assert rc == 1 and "need positive and negative examples" in capsys.readouterr().err
