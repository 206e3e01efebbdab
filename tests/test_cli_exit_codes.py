"""Every command reports bad input the same way, from jaxdict.cli: exit 1 and one line
`jaxdict CMD: error: ...` on stderr (train, harvest, sweep and export used to exit 2)."""
import pytest

from jaxdict.cli import main

# (argv, words the one error line must contain), each failing before any heavy work.
BAD_INPUT = {
    "harvest": (["harvest", "--hook", "resid_post.9", "--context", "1", "--out", "{tmp}/h"], "context must be an int >= 2"),
    "store": (["store", "info", "{tmp}/no-store"], "no-store"),
    "train": (["train", "--config", "experiments/base.py:tinyy", "--out", "{tmp}/r"], "did you mean tiny"),
    "sweep": (["sweep", "{tmp}/missing.py", "--out", "{tmp}/s"], "missing.py"),
    "scaling": (["scaling", "fit", "{tmp}/no-sweep", "--out", "{tmp}/f"], "no-sweep"),
    "scaling-where": (["scaling", "fit", "{tmp}/no-sweep", "--out", "{tmp}/f", "--where", "arch"],
                      "is not COLUMN=VALUE"),
    "eval": (["eval", "{tmp}/run", "--out", "{tmp}/e", "--tokens", "0"], "--tokens = 0 must be >= 1"),
    "absorption": (["absorption", "{tmp}/no-run", "--out", "{tmp}/a"], "no-run"),
    "features": (["features", "{tmp}/run", "--out", "{tmp}/e", "--tokens", "0"], "--tokens (0)"),
    "steer": (["steer", "{tmp}/no-run", "--feature", "1", "--prompt", "x", "--out", "{tmp}/st"], "no-run"),
    "export": (["export", "{tmp}/run", "--import", "{tmp}/x.npz", "--out", "{tmp}/x"], "give either RUN"),
    "bench": (["bench", "--archs", "relu"], "unknown ['relu']"),
    "quickstart": (["quickstart", "--out", "{tmp}/q", "--tokens", str(10**15)], "not enough disk"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_exits_1_with_one_error_line(case, tmp_path, capsys):
    argv, words = BAD_INPUT[case]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"jaxdict {argv[0]}: error: "), err
    assert words in errors[0] and err.splitlines()[-1] == errors[0] and "Traceback" not in err


def test_a_command_line_argparse_cannot_parse_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval"])  # RUN and --out missing
    assert exc.value.code == 2 and "the following arguments are required" in capsys.readouterr().err
