"""Read a sweep's `results.csv` into typed run records, flagging runs that must stay out of a fit.

The sweep runner writes one row per run (columns listed in `EXPECTED_COLUMNS`; extra columns are
ignored). Rows are parsed with the `csv` module: the table is small and pandas is not a dependency.
Diverged runs and runs whose loss is not a finite number are kept (the report lists them) but are
marked `excluded_reason` so that no fit ever sees them.
"""
from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path

from jaxdict.scaling.errors import ScalingInputError

# The results table's schema, in the order the sweep runner (jaxdict/sweep/results.py) writes it;
# `k` / `l1_coeff` may be empty depending on the architecture. `flops` is the training compute C of
# jaxdict.scaling.compute; `epochs` = tokens / rows of the training split (1 or less: no repeats).
EXPECTED_COLUMNS = (
    "name", "arch", "n_features", "k", "l1_coeff", "lr", "steps", "batch_size", "tokens", "flops",
    "final_loss", "fvu", "l0", "dead_frac", "wall_time_s", "diverged",
)
# Written too, read only for reporting (the fits ignore them).
EXTRA_COLUMNS = ("epochs", "dense_frac", "l0_coeff", "seed", "group_size", "run_dir")
RESULT_COLUMNS = EXPECTED_COLUMNS + EXTRA_COLUMNS
# The columns a fit cannot do without (plus the metric being fitted).
REQUIRED_COLUMNS = ("name", "n_features", "lr", "steps", "tokens", "diverged")
METRICS = ("final_loss", "fvu")
COMPUTE_MODES = ("auto", "flops", "features_x_tokens")

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One row of the results table. `loss` is the fitted metric (final_loss or fvu)."""

    name: str
    arch: str
    k: str  # raw text: empty for architectures without k
    l1_coeff: str  # raw text: empty for architectures without an L1 penalty
    n_features: int
    lr: float
    steps: int
    tokens: float
    flops: float | None  # None when the row has no positive, finite FLOP count
    loss: float  # may be nan for excluded runs
    diverged: bool
    excluded_reason: str | None  # None: the run takes part in the fits
    epochs: float | None = None  # reads of the training split; None where the table has no `epochs`

    @property
    def included(self) -> bool:
        return self.excluded_reason is None


@dataclasses.dataclass(frozen=True)
class ResultsTable:
    """All runs of a sweep, the metric they are scored by and how compute C is defined."""

    source: Path
    metric: str
    runs: tuple[RunRecord, ...]  # the rows that pass `where`
    compute_definition: str  # "flops" or "features_x_tokens"
    where: tuple[tuple[str, str], ...] = ()  # (column, value) filters applied to the rows
    n_filtered_out: int = 0  # rows of the file that `where` left out

    @property
    def included(self) -> tuple[RunRecord, ...]:
        return tuple(r for r in self.runs if r.included)

    @property
    def excluded(self) -> tuple[RunRecord, ...]:
        return tuple(r for r in self.runs if not r.included)

    def compute(self, run: RunRecord) -> float:
        """Training compute C of one run under this table's compute definition."""
        if self.compute_definition == "flops":
            assert run.flops is not None, run.name  # guaranteed by load_results_table
            return run.flops
        # DESIGN.md §4: C ∝ F × training tokens (single epoch); the FLOPs per unit of C (≈ 12·d for
        # a dense step, DESIGN.md §7) only rescale `a` of a power law, never its exponent.
        return float(run.n_features) * run.tokens


def resolve_table_path(path: str | Path) -> Path:
    """`path` itself when it is a file, else `<path>/results.csv`; a clear error when neither exists."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.csv"
        if not p.is_file():
            raise ScalingInputError(
                f"sweep folder {str(path)!r} has no results.csv; pass a sweep output folder written "
                "by `jaxdict sweep` or the path of a results CSV file"
            )
        return p
    if not p.is_file():
        raise ScalingInputError(f"results table {str(path)!r} does not exist (expected a sweep folder or a CSV file)")
    return p


def _parse_float(text: str, run: str, column: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ScalingInputError(f"run {run!r}: column {column!r} has {text!r}, expected a number") from None


def _parse_positive_int(text: str, run: str, column: str) -> int:
    value = _parse_float(text, run, column)
    if not math.isfinite(value) or value <= 0 or value != int(value):
        raise ScalingInputError(f"run {run!r}: column {column!r} has {text!r}, expected a positive integer")
    return int(value)


def _parse_positive_float(text: str, run: str, column: str) -> float:
    value = _parse_float(text, run, column)
    if not math.isfinite(value) or value <= 0:
        raise ScalingInputError(f"run {run!r}: column {column!r} has {text!r}, expected a positive number")
    return value


def _parse_bool(text: str, run: str, column: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ScalingInputError(
        f"run {run!r}: column {column!r} has {text!r}, expected true/false (or 1/0, yes/no; empty = false)"
    )


def _optional_float(row: dict[str, str], column: str) -> float | None:
    """A reporting-only column: its number, or None when absent, empty or not a finite number."""
    try:
        value = float((row.get(column) or "").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _parse_row(row: dict[str, str], metric: str) -> RunRecord:
    name = (row["name"] or "").strip()
    if not name:
        raise ScalingInputError(f"a row has an empty 'name': {row}")
    diverged = _parse_bool(row["diverged"] or "", name, "diverged")
    loss_text = (row[metric] or "").strip()
    try:
        loss = float(loss_text) if loss_text else math.nan
    except ValueError:
        loss = math.nan  # e.g. "error": not a number, so the run is excluded below and listed
    reason = None
    if diverged:
        reason = "diverged"
    elif not math.isfinite(loss):
        reason = f"non-finite {metric} ({loss_text!r})"
    elif loss <= 0:
        # The saturating fit works on log L; a loss of 0 or below is not a training outcome.
        reason = f"non-positive {metric} ({loss_text!r})"
    flops_text = (row.get("flops") or "").strip()
    if reason is not None:
        # An excluded run may have half-written fields (a crash mid-run): parse leniently.
        def lenient(col: str) -> float:
            try:
                return float((row.get(col) or "").strip())
            except ValueError:
                return math.nan

        n_features, steps = lenient("n_features"), lenient("steps")
        return RunRecord(
            name=name, arch=(row.get("arch") or "").strip(), k=(row.get("k") or "").strip(),
            l1_coeff=(row.get("l1_coeff") or "").strip(),
            n_features=int(n_features) if math.isfinite(n_features) else 0,
            lr=lenient("lr"), steps=int(steps) if math.isfinite(steps) else 0, tokens=lenient("tokens"),
            flops=lenient("flops") if lenient("flops") > 0 else None,
            loss=loss, diverged=diverged, excluded_reason=reason, epochs=_optional_float(row, "epochs"),
        )
    flops = None
    if flops_text:
        value = _parse_float(flops_text, name, "flops")
        flops = value if math.isfinite(value) and value > 0 else None
    return RunRecord(
        name=name,
        arch=(row.get("arch") or "").strip(),
        k=(row.get("k") or "").strip(),
        l1_coeff=(row.get("l1_coeff") or "").strip(),
        n_features=_parse_positive_int(row["n_features"] or "", name, "n_features"),
        lr=_parse_positive_float(row["lr"] or "", name, "lr"),
        steps=_parse_positive_int(row["steps"] or "", name, "steps"),
        tokens=_parse_positive_float(row["tokens"] or "", name, "tokens"),
        flops=flops,
        loss=loss,
        diverged=False,
        excluded_reason=None,
        epochs=_optional_float(row, "epochs"),
    )


def _same_value(cell: str, wanted: str) -> bool:
    """Cell equals the filter value, as numbers when both are numbers (so k=32 matches "32.0")."""
    cell, wanted = cell.strip(), wanted.strip()
    try:
        return float(cell) == float(wanted)
    except ValueError:
        return cell == wanted


def _apply_where(rows: list[dict[str, str]], where: Mapping[str, str], header: list[str], source: Path):
    for column, value in where.items():
        if column not in header:
            raise ScalingInputError(
                f"filter on column {column!r}, which {str(source)!r} lacks; columns present: {', '.join(header)}"
            )
        kept = [r for r in rows if _same_value(r[column] or "", value)]
        if not kept:
            present = sorted({(r[column] or "").strip() for r in rows})
            raise ScalingInputError(
                f"no run has {column}={value!r}; values of {column!r} present: {', '.join(map(repr, present))}"
            )
        rows = kept
    return rows


def load_results_table(
    path: str | Path, metric: str = "final_loss", compute: str = "auto", where: Mapping[str, str] | None = None
) -> ResultsTable:
    """Read a sweep folder's `results.csv` (or a CSV path) into a `ResultsTable`.

    `where`: keep only rows whose column equals the value ({"arch": "topk", "k": "32"}), e.g. to fit
    one architecture or one k of a grid that holds several.

    `compute`: "flops" uses the `flops` column (every included run must have a positive value);
    "features_x_tokens" uses C = n_features × tokens; "auto" takes flops when every included run
    has it and F × tokens otherwise. Raises `ScalingInputError` for a missing file, an empty table,
    a missing column, duplicate run names or a malformed value of an included run.
    """
    if metric not in METRICS:
        raise ScalingInputError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    if compute not in COMPUTE_MODES:
        raise ScalingInputError(f"compute {compute!r} is not one of {', '.join(COMPUTE_MODES)}")
    csv_path = resolve_table_path(path)
    with csv_path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if not header:
            raise ScalingInputError(f"results table {str(csv_path)!r} is empty (no header, no rows)")
        reader.fieldnames = header
        rows = list(reader)
    missing = [c for c in (*REQUIRED_COLUMNS, metric) if c not in header]
    if missing:
        raise ScalingInputError(
            f"results table {str(csv_path)!r} lacks column(s) {', '.join(repr(m) for m in missing)}; "
            f"columns present: {', '.join(header)}"
        )
    if not rows:
        raise ScalingInputError(f"results table {str(csv_path)!r} has a header but no runs")
    seen: set[str] = set()
    for row in rows:
        name = (row["name"] or "").strip()
        if name in seen:
            raise ScalingInputError(f"run name {name!r} appears more than once in {str(csv_path)!r}")
        seen.add(name)
    n_rows = len(rows)
    where = dict(where or {})
    rows = _apply_where(rows, where, header, csv_path)
    runs = tuple(_parse_row(row, metric) for row in rows)
    included = [r for r in runs if r.included]
    without_flops = [r.name for r in included if r.flops is None]
    if compute == "flops" and without_flops:
        raise ScalingInputError(
            f"compute='flops' but run(s) {', '.join(without_flops[:10])} have no positive 'flops' value; "
            "use compute='features_x_tokens' (or 'auto')"
        )
    if compute == "auto":
        compute = "flops" if included and not without_flops else "features_x_tokens"
    return ResultsTable(source=csv_path, metric=metric, runs=runs, compute_definition=compute,
                        where=tuple(where.items()), n_filtered_out=n_rows - len(rows))
