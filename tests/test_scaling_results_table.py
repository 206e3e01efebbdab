"""Reading results.csv: columns, empty tables, excluded runs, the compute definition."""
import csv

import pytest

from jaxdict.scaling import ScalingInputError, load_results_table

HEADER = ["name", "arch", "n_features", "k", "l1_coeff", "lr", "steps", "batch_size", "tokens", "flops",
          "final_loss", "fvu", "l0", "dead_frac", "wall_time_s", "diverged"]


def _row(name, n_features=1024, steps=1000, final_loss="0.5", diverged="false", flops="", **extra):
    row = dict(name=name, arch="relu_l1", n_features=n_features, k="", l1_coeff="5", lr="4e-4", steps=steps,
               batch_size=256, tokens=steps * 256, flops=flops, final_loss=final_loss, fvu="0.2", l0="30",
               dead_frac="0.0", wall_time_s="12.5", diverged=diverged)
    row.update(extra)
    return row


def _write(path, rows, header=HEADER):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def test_reads_rows_and_flags_excluded_runs(tmp_path):
    _write(tmp_path / "results.csv", [
        _row("ok"), _row("div", diverged="True", final_loss="0.1"), _row("nan", final_loss="nan"),
        _row("empty", final_loss=""), _row("inf", final_loss="inf"),
        _row("crashed", final_loss="", n_features="", steps=""),  # half-written row of a crash
    ])
    table = load_results_table(tmp_path)  # a folder resolves to folder/results.csv
    assert [r.name for r in table.included] == ["ok"]
    reasons = {r.name: r.excluded_reason for r in table.excluded}
    assert reasons == {"div": "diverged", "nan": "non-finite final_loss ('nan')",
                       "empty": "non-finite final_loss ('')", "inf": "non-finite final_loss ('inf')",
                       "crashed": "non-finite final_loss ('')"}
    ok = table.included[0]
    assert (ok.n_features, ok.steps, ok.tokens, ok.lr, ok.loss) == (1024, 1000, 256000.0, 4e-4, 0.5)
    assert table.compute_definition == "features_x_tokens"
    assert table.compute(ok) == 1024 * 256000.0


def test_metric_fvu_and_extra_columns(tmp_path):
    rows = [_row("a", extra_col="x")]
    _write(tmp_path / "r.csv", rows, header=HEADER + ["extra_col"])
    table = load_results_table(tmp_path / "r.csv", metric="fvu")
    assert table.included[0].loss == 0.2


def test_compute_from_flops_when_every_run_has_it(tmp_path):
    _write(tmp_path / "r.csv", [_row("a", flops="1e15"), _row("b", flops="2e15")])
    table = load_results_table(tmp_path / "r.csv")
    assert table.compute_definition == "flops"
    assert [table.compute(r) for r in table.runs] == [1e15, 2e15]
    _write(tmp_path / "r.csv", [_row("a", flops="1e15"), _row("b", flops="")])
    assert load_results_table(tmp_path / "r.csv").compute_definition == "features_x_tokens"
    with pytest.raises(ScalingInputError, match="compute='flops' but run\\(s\\) b have no positive 'flops'"):
        load_results_table(tmp_path / "r.csv", compute="flops")


def test_missing_column_is_named_with_those_present(tmp_path):
    header = [h for h in HEADER if h != "tokens"]
    _write(tmp_path / "r.csv", [_row("a")], header=header)
    with pytest.raises(ScalingInputError, match="lacks column\\(s\\) 'tokens'; columns present: name, arch, "):
        load_results_table(tmp_path / "r.csv")
    header = [h for h in HEADER if h != "fvu"]
    _write(tmp_path / "r.csv", [_row("a")], header=header)
    load_results_table(tmp_path / "r.csv")  # fvu is only needed when it is the metric
    with pytest.raises(ScalingInputError, match="'fvu'"):
        load_results_table(tmp_path / "r.csv", metric="fvu")


def test_empty_tables(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ScalingInputError, match="is empty"):
        load_results_table(tmp_path / "empty.csv")
    _write(tmp_path / "header_only.csv", [])
    with pytest.raises(ScalingInputError, match="has a header but no runs"):
        load_results_table(tmp_path / "header_only.csv")


def test_bad_paths_and_values(tmp_path):
    with pytest.raises(ScalingInputError, match="does not exist"):
        load_results_table(tmp_path / "nope.csv")
    with pytest.raises(ScalingInputError, match="has no results.csv"):
        load_results_table(tmp_path)
    _write(tmp_path / "r.csv", [_row("a", n_features="lots")])
    with pytest.raises(ScalingInputError, match="run 'a': column 'n_features' has 'lots', expected a number"):
        load_results_table(tmp_path / "r.csv")
    _write(tmp_path / "r.csv", [_row("a", steps="-3")])
    with pytest.raises(ScalingInputError, match="'steps' has '-3', expected a positive integer"):
        load_results_table(tmp_path / "r.csv")
    _write(tmp_path / "r.csv", [_row("a", diverged="maybe")])
    with pytest.raises(ScalingInputError, match="'diverged' has 'maybe', expected true/false"):
        load_results_table(tmp_path / "r.csv")
    _write(tmp_path / "r.csv", [_row("a"), _row("a")])
    with pytest.raises(ScalingInputError, match="run name 'a' appears more than once"):
        load_results_table(tmp_path / "r.csv")
    with pytest.raises(ScalingInputError, match="metric 'l0' is not one of final_loss, fvu"):
        load_results_table(tmp_path / "r.csv", metric="l0")
