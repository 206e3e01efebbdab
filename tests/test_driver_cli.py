"""`jaxdict train` on the command line (in-process): resolved config printed, --set, --profile,
and its refusals (unknown key with close matches, a folder holding another run)."""
import json

from jaxdict.cli import main

TINY = "experiments/base.py:tiny"
FAST = ["--set", "optim.total_steps=6", "--set", "run.log_every=3", "--no-progress"]


def test_train_cli_profile_resume_and_refusal(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", TINY, "--out", str(out), "--profile", "2", *FAST]) == 0
    printed = capsys.readouterr()
    assert '"total_steps": 6' in printed.out and "finished at step 6" in printed.out
    assert any(p.is_file() for p in (out / "profile").rglob("*"))  # a jax.profiler trace
    assert json.loads((out / "config.json").read_text())["optim"]["total_steps"] == 6
    # same config again: nothing left to train, the result stands
    assert main(["train", "--config", TINY, "--out", str(out), *FAST]) == 0
    # a different config in the same folder is refused, naming the difference
    assert main(["train", "--config", TINY, "--out", str(out), *FAST, "--set", "optim.lr=0.01"]) == 1
    err = capsys.readouterr().err
    assert "holds a run with a different config" in err and "optim.lr: 0.001 -> 0.01" in err and "--force" in err


def test_train_cli_unknown_key_names_close_matches(tmp_path, capsys):
    assert main(["train", "--config", TINY, "--out", str(tmp_path / "r"), "--set", "optim.lrr=1"]) == 1
    err = capsys.readouterr().err
    assert "unknown config key 'optim.lrr'" in err and "did you mean 'lr'" in err
    assert main(["train", "--config", "experiments/base.py:tinyy", "--out", str(tmp_path / "r")]) == 1
    assert "did you mean tiny" in capsys.readouterr().err


def test_train_cli_partial_multihost_flags_refused(tmp_path, capsys):
    assert main(["train", "--config", TINY, "--out", str(tmp_path / "r"), "--num-processes", "2"]) == 1
    assert "--coordinator, --num-processes and --process-id together" in capsys.readouterr().err
