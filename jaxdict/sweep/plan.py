"""Which points a sweep has and which of them share one pass over the data."""
from __future__ import annotations

import collections
import difflib
import json
from pathlib import Path

from jaxdict.atomic import write_json_atomic
from jaxdict.config import split_spec
from jaxdict.sae.config import ConfigError
from jaxdict.train.config import RunConfig, group_key, load_sweep_points

SWEEP_FILE = "sweep.json"


class SweepError(ConfigError):
    """A sweep file or output folder that cannot be run as asked."""


def load_points(spec: str, only: list[str] | None = None) -> list[RunConfig]:
    """The points of `file.py[:variant]`, refusing duplicate names; `only` keeps the named ones."""
    path, variant = split_spec(spec)
    if not path.endswith(".py"):
        raise SweepError(f"sweep {spec!r}: expected experiments/<file>.py[:variant]")
    points = load_sweep_points(path, variant)
    counts = collections.Counter(p.run.name for p in points)
    dups = sorted(n for n, c in counts.items() if c > 1)
    if dups:
        raise SweepError(f"sweep {spec} names several points alike: {', '.join(dups)}; every run.name must be unique")
    if only:
        names = [p.run.name for p in points]
        missing = [n for n in only if n not in counts]
        if missing:
            hints = [f"{m!r} (close: {', '.join(difflib.get_close_matches(m, names, n=3)) or 'none'})" for m in missing]
            raise SweepError(f"--only names no point of {spec}: {'; '.join(hints)}")
        points = [p for p in points if p.run.name in only]
    return points


def plan_groups(points: list[RunConfig], group: bool = True) -> list[list[RunConfig]]:
    """Points in sweep order, those whose shapes agree (only λ, lr, seed differ) in one group."""
    if not group:
        return [[p] for p in points]
    groups: dict[str, list[RunConfig]] = {}
    for p in points:
        groups.setdefault(group_key(p), []).append(p)
    return list(groups.values())


def sweep_identity(spec: str) -> dict:
    path, variant = split_spec(spec)
    return {"sweep_file": str(Path(path).resolve()), "variant": variant}


def claim_out_dir(out: Path, spec: str, points: list[RunConfig], adopt: bool = False) -> None:
    """Mark `out` as this sweep's folder, refusing one that belongs to another sweep. `adopt`:
    accept a folder without a marker whose contents are points run one by one (`jaxdict train`)."""
    marker = out / SWEEP_FILE
    ident = sweep_identity(spec)
    if marker.is_file():
        old = json.loads(marker.read_text())
        if {k: old.get(k) for k in ident} != ident:
            raise SweepError(f"{out} belongs to another sweep ({old.get('sweep_file')}:{old.get('variant')}), "
                             f"not {ident['sweep_file']}:{ident['variant']}; choose another --out")
        names = sorted(set(old.get("points", [])) | {p.run.name for p in points})
    else:
        if out.is_dir() and any(out.iterdir()) and not adopt:
            raise SweepError(f"{out} is not empty and holds no {SWEEP_FILE}; it is not a folder of this sweep")
        names = sorted(p.run.name for p in points)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {**ident, "points": names})
