"""`jaxdict scaling fit` end to end on synthetic sweeps, and its answers to bad input."""
import csv
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from jaxdict.cli import main
from jaxdict.scaling import compute_optimal_frontier, fit_sweep

HEADER = ["name", "arch", "n_features", "k", "l1_coeff", "lr", "steps", "batch_size", "tokens", "flops",
          "final_loss", "fvu", "l0", "dead_frac", "wall_time_s", "diverged"]
BATCH = 256


def _write(path, rows, header=HEADER):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def _row(name, n_features, steps, loss, lr=4e-4, diverged="false", fvu=None):
    return dict(name=name, arch="relu_l1", n_features=n_features, k="", l1_coeff="5", lr=repr(lr), steps=steps,
                batch_size=BATCH, tokens=steps * BATCH, flops="", final_loss=repr(loss),
                fvu=repr(loss / 3.0 if fvu is None else fvu), l0="30", dead_frac="0.01", wall_time_s="3.0",
                diverged=diverged)


def _grid_sweep(path, seed=0):
    """F × steps grid with a Chinchilla-shaped loss L = E + A/F^0.5 + B/S^0.5, 1 % noise, 1 diverged run."""
    rng = np.random.default_rng(seed)
    rows = []
    for f in (256, 512, 1024, 2048, 4096, 8192):
        for s in (250, 500, 1000, 2000, 4000):
            loss = (0.05 + 30.0 / f**0.5 + 20.0 / s**0.5) * float(np.exp(rng.normal(0.0, 0.01)))
            rows.append(_row(f"F{f}_S{s}", f, s, loss, lr=4e-4 * (f / 256) ** -0.25))
    rows.append(_row("F8192_S8000", 8192, 8000, 1e30, diverged="true"))
    rows.append(_row("F4096_S8000", 4096, 8000, float("nan")))
    return _write(path / "results.csv", rows)


def test_cli_end_to_end_writes_parseable_report_json_and_plots(tmp_path, capsys):
    _grid_sweep(tmp_path / "sweep")
    out = tmp_path / "report"
    rc = main(["scaling", "fit", str(tmp_path / "sweep"), "--out", str(out), "--bootstrap", "200"])
    assert rc == 0
    assert "exponent b" in capsys.readouterr().out

    result = json.loads((out / "fit.json").read_text())
    assert result["compute_definition"] == "features_x_tokens" and result["n_runs"] == 32
    assert len(result["runs"]) == 30 and sum(r["on_frontier"] for r in result["runs"]) == len(result["frontier"])
    assert {e["name"]: e["reason"] for e in result["excluded"]} == {
        "F8192_S8000": "diverged", "F4096_S8000": "non-finite final_loss ('nan')"}
    # The frontier in fit.json is the lower envelope of the included runs.
    with open(tmp_path / "sweep" / "results.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["diverged"] == "false" and r["final_loss"] != "nan"]
    c = np.array([int(r["n_features"]) * float(r["tokens"]) for r in rows])
    loss = np.array([float(r["final_loss"]) for r in rows])
    assert [p["name"] for p in result["frontier"]] == [rows[i]["name"] for i in compute_optimal_frontier(c, loss)]
    for key in ("loss", "n_features", "steps", "tokens", "lr"):
        law = result["fits"][key]
        lo, hi = law["ci"]["b"]
        assert lo <= law["b"] <= hi, key
    # The extrapolation check predicts the two largest-compute frontier runs from the others.
    ext = result["extrapolation"]
    assert [p["name"] for p in ext["points"]] == [p["name"] for p in result["frontier"][-2:]]
    for p in ext["points"]:
        assert p["rel_error"] == pytest.approx((p["predicted"] - p["measured"]) / p["measured"])
        assert abs(p["rel_error"]) < 0.2

    expected = {f"{stem}.{fmt}" for stem in ("loss_vs_compute", "frontier_features_steps", "lr_vs_compute")
                for fmt in ("png", "svg")}
    assert set(result["plots"]) == expected
    for name in expected:
        data = (out / name).read_bytes()
        if name.endswith(".png"):
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
        else:
            assert ET.fromstring(data).tag == "{http://www.w3.org/2000/svg}svg"
    report = (out / "report.md").read_text()
    for needle in ("## Fitted laws", "## Extrapolation check", "F8192_S8000 | diverged", "![loss_vs_compute]",
                   f"`{result['fits']['loss']['fitted']}`"):
        assert needle in report, needle


def test_fit_sweep_recovers_known_laws_within_bootstrap_intervals(tmp_path):
    # Every run lies on one law: F = 2^(6+i) ∝ C^0.5, tokens ∝ C^0.5, lr ∝ C^-0.1,
    # L = a·C^(−0.3) + 0.1 with a set so the power term is 2 at the smallest C; 1 % noise on L.
    rng = np.random.default_rng(7)
    rows = []
    for i in range(12):
        f, steps = 2 ** (6 + i), 2 ** (4 + i)
        c = float(f * steps * BATCH)
        a_true = 2.0 * float(64 * 16 * BATCH) ** 0.3
        loss = (a_true * c**-0.3 + 0.1) * float(np.exp(rng.normal(0.0, 0.01)))
        rows.append(_row(f"run{i}", f, steps, loss, lr=1e-2 * c**-0.1))
    _write(tmp_path / "results.csv", rows)
    result = fit_sweep(tmp_path, tmp_path / "out", bootstrap=300, make_plots=False)
    fits = result["fits"]
    for name, truth in (("a", a_true), ("b", 0.3), ("c", 0.1)):
        lo, hi = fits["loss"]["ci"][name]
        assert lo <= truth <= hi, (name, truth, lo, hi)
    assert fits["loss"]["b"] == pytest.approx(0.3, abs=0.03)
    # Noise-free allocation laws come out exactly, whichever runs noise pushed off the frontier.
    assert fits["n_features"]["b"] == pytest.approx(0.5, abs=1e-9)
    assert fits["steps"]["b"] == pytest.approx(0.5, abs=1e-9)
    assert fits["lr"]["b"] == pytest.approx(-0.1, abs=1e-9)
    assert fits["lr"]["a"] == pytest.approx(1e-2, rel=1e-6)
    assert result["plots"] == [] and not (tmp_path / "out" / "loss_vs_compute.png").exists()


def test_fvu_metric_constant_lr_and_seeded_determinism(tmp_path):
    rows = [_row(f"r{i}", 2 ** (6 + i), 2 ** (4 + i), 1.0, fvu=0.9 * 0.7**i + 0.05) for i in range(7)]
    _write(tmp_path / "results.csv", rows)
    r1 = fit_sweep(tmp_path, tmp_path / "o1", metric="fvu", bootstrap=30, seed=3, make_plots=False)
    r2 = fit_sweep(tmp_path, tmp_path / "o2", metric="fvu", bootstrap=30, seed=3, make_plots=False)
    assert (tmp_path / "o1" / "fit.json").read_text() == (tmp_path / "o2" / "fit.json").read_text().replace("o2", "o1")
    assert r1["metric"] == "fvu" and [p["loss"] for p in r1["frontier"]] == [float(r["fvu"]) for r in rows]
    assert r1["fits"]["lr"] is None  # one learning rate for every run: no lr*(C) fit
    assert "lr*(C) is not fitted" in (tmp_path / "o1" / "report.md").read_text()
    assert r2["fits"]["loss"]["b"] == r1["fits"]["loss"]["b"]


def _fit(tmp_path, *extra):
    return main(["scaling", "fit", str(tmp_path), "--out", str(tmp_path / "out"), "--bootstrap", "20", *extra])


def test_too_few_points_and_too_many_held_out(tmp_path, capsys):
    rows = [_row(f"r{i}", 2 ** (6 + i), 2 ** (4 + i), 1.0 / (i + 1)) for i in range(5)]
    rows += [_row("worse", 64, 2 ** 8, 5.0), _row("div", 128, 2 ** 8, 0.01, diverged="true")]
    _write(tmp_path / "results.csv", rows[:2] + rows[5:])
    assert _fit(tmp_path) == 1
    err = capsys.readouterr().err
    assert "too few points" in err and "needs at least 4" in err and "got 2 (from 3 usable runs; 1 excluded)" in err
    _write(tmp_path / "results.csv", rows)
    assert _fit(tmp_path) == 1
    assert "--holdout-top 2 leaves 3 frontier runs" in capsys.readouterr().err
    assert _fit(tmp_path, "--holdout-top", "1") == 0
    assert _fit(tmp_path, "--holdout-top", "0", "--no-plots") == 0
    assert "No extrapolation check" in (tmp_path / "out" / "report.md").read_text()
    assert _fit(tmp_path, "--bootstrap", "-1") == 1
    assert "--bootstrap must be ≥ 0" in capsys.readouterr().err


def test_bad_tables_give_clear_errors(tmp_path, capsys):
    _write(tmp_path / "results.csv", [_row("a", 64, 16, 1.0)], header=[h for h in HEADER if h != "steps"])
    assert _fit(tmp_path) == 1
    assert "lacks column(s) 'steps'; columns present: name, arch, n_features" in capsys.readouterr().err
    (tmp_path / "results.csv").write_text("")
    assert _fit(tmp_path) == 1
    assert "is empty" in capsys.readouterr().err
    _write(tmp_path / "results.csv", [_row("a", 64, 16, float("inf")), _row("b", 64, 32, 1.0, diverged="true")])
    assert _fit(tmp_path) == 1
    assert "all 2 runs" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_console_command_in_a_subprocess_imports_no_training_stack(tmp_path):
    _grid_sweep(tmp_path / "sweep")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "jaxdict.cli", "scaling", "fit", str(tmp_path / "sweep" / "results.csv"),
         "--out", str(tmp_path / "out"), "--bootstrap", "20", "--no-plots"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "held out" in proc.stdout and (tmp_path / "out" / "fit.json").exists()
    # DESIGN.md §2: scaling fits sit at the bottom of the flow and import no JAX training stack.
    code = ("import sys, jaxdict.scaling, jaxdict.commands.scaling; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'optax', 'grain', 'flax', 'orbax'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_where_filters_one_architecture_and_mixed_tables_are_flagged(tmp_path, capsys):
    rows = []
    for arch, k, scale in (("relu_l1", "", 1.0), ("topk", "32", 0.5)):
        for i in range(6):
            f, steps = 2 ** (6 + i), 2 ** (4 + i)
            row = _row(f"{arch}_{i}", f, steps, scale * (0.1 + 2.0 * (f * steps) ** -0.3))
            row.update(arch=arch, k=k)
            rows.append(row)
    _write(tmp_path / "results.csv", rows)
    assert _fit(tmp_path, "--no-plots") == 0
    result = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert result["mixed_settings"] == {"arch": ["relu_l1", "topk"], "k": ["", "32"]}
    assert "the used runs mix arch values relu_l1, topk" in (tmp_path / "out" / "report.md").read_text()
    assert {p["name"].split("_")[0] for p in result["frontier"]} == {"topk"}  # the lower loss wins

    assert _fit(tmp_path, "--no-plots", "--where", "arch=relu_l1") == 0
    result = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert result["where"] == {"arch": "relu_l1"} and result["n_filtered_out"] == 6
    assert result["mixed_settings"] == {} and len(result["frontier"]) == 6
    assert result["fits"]["loss"]["b"] == pytest.approx(0.3, abs=1e-6)
    assert "filter: arch=relu_l1 (6 rows of the table left out)" in (tmp_path / "out" / "report.md").read_text()
    assert _fit(tmp_path, "--no-plots", "--where", "k=32.0") == 0  # numbers compare as numbers
    assert json.loads((tmp_path / "out" / "fit.json").read_text())["n_included"] == 6

    assert _fit(tmp_path, "--where", "arch=jumprelu") == 1
    assert "no run has arch='jumprelu'; values of 'arch' present: 'relu_l1', 'topk'" in capsys.readouterr().err
    assert _fit(tmp_path, "--where", "width=3") == 1
    assert "filter on column 'width', which" in capsys.readouterr().err
    assert _fit(tmp_path, "--where", "arch") == 1
    assert "--where 'arch' is not COLUMN=VALUE" in capsys.readouterr().err
