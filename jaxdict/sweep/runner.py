"""Run every point of a sweep: sequentially in this process, or as N local worker processes (each
takes every N-th group). Finished points (a result.json in their folder) are skipped; interrupted
ones resume from their latest checkpoint, because the driver resumes any folder holding the same
run. `<out>/results.csv` is rewritten after every group and at the end."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Callable

from jaxdict.sweep.plan import SweepError, claim_out_dir, load_points, plan_groups
from jaxdict.sweep.results import result_row, write_results
from jaxdict.train.config import RunConfig
from jaxdict.train.epochs import warn_if_repeats

RESULTS_FILE = "results.csv"


def _placed(points: list[RunConfig], out: Path) -> list[RunConfig]:
    return [dataclasses.replace(p, run=dataclasses.replace(p.run, out_dir=str(out / p.run.name))) for p in points]


def collect_results(out: Path, groups: list[list[RunConfig]]) -> list[dict]:
    rows = []
    for g in groups:
        for p in g:
            row = result_row(p.run.out_dir, group_size=len(g))
            if row is not None:
                rows.append(row)
    return rows


def _run_groups(groups: list[list[RunConfig]], out: Path, log: Callable[[str], None],
                callback=None) -> tuple[list[str], bool]:
    """Train the unfinished members of each group; returns (names of points not finished,
    whether a preemption stopped the sweep)."""
    from jaxdict.train.driver import train_group

    failed: list[str] = []
    for g in groups:
        todo = [p for p in g if result_row(p.run.out_dir) is None]
        names = ", ".join(p.run.name for p in g)
        if not todo:
            log(f"skip (finished): {names}")
            continue
        log(f"train {'group of ' + str(len(todo)) + ': ' if len(todo) > 1 else ''}"
            f"{', '.join(p.run.name for p in todo)}")
        try:
            for p in todo:
                warn_if_repeats(p, log)
            results = train_group(todo, [p.run.out_dir for p in todo], callback=callback, log=log)
            for r in results:
                if r.diverged:
                    log(f"{r.name}: diverged ({r.stop_reason})")
            if any(r.preempted for r in results):
                # SIGTERM / preemption: the group saved its checkpoints; stop the whole sweep.
                log(f"preempted at step {results[0].step}; rerun the same sweep command to resume")
                write_results(out / RESULTS_FILE, collect_results(out, groups))
                return failed + [r.name for r in results], True
        except Exception as err:  # one broken point must not stop the others (Ctrl-C still does)
            log(f"FAILED {names}: {type(err).__name__}: {err}")
            log(traceback.format_exc(limit=3))
            failed.extend(p.run.name for p in todo)
        write_results(out / RESULTS_FILE, collect_results(out, groups))
    return failed, False


def run_sweep(
    spec: str,
    out: str | Path,
    *,
    processes: int = 1,
    only: list[str] | None = None,
    group: bool = True,
    worker: tuple[int, int] | None = None,
    table_only: bool = False,
    log: Callable[[str], None] = print,
    callback=None,
) -> int:
    """Run the sweep `file.py[:variant]` into `out`; returns the number of points not finished
    (0 also when a preemption stopped it: rerun to resume).
    `worker=(i, n)` runs only groups i, i+n, ... (what each of `processes` subprocesses does);
    `table_only` trains nothing and writes results.csv from the points already finished."""
    out = Path(out)
    if processes < 1:
        raise SweepError(f"--processes {processes}; must be >= 1")
    points = load_points(spec, only)
    if worker is None:
        claim_out_dir(out, spec, points, adopt=table_only)
    groups = plan_groups(_placed(points, out), group=group)
    if worker is not None:
        i, n = worker
        mine = [g for j, g in enumerate(groups) if j % n == i]
        failed, preempted = _run_groups(mine, out, log, callback)
        return 0 if preempted else len(failed)
    log(f"sweep {spec}: {len(points)} points in {len(groups)} passes over the data -> {out}")
    preempted = False
    failed: list[str] = []
    if table_only:  # points trained elsewhere (e.g. one `jaxdict train` per TPU slice): just tabulate
        pass
    elif processes == 1:
        failed, preempted = _run_groups(groups, out, log, callback)
    else:
        failed = _spawn_workers(spec, out, processes, only, group, log)
    rows = collect_results(out, groups)
    write_results(out / RESULTS_FILE, rows)
    unfinished = len(points) - len(rows)
    log(f"{len(rows)} of {len(points)} points finished; table: {out / RESULTS_FILE}"
        + (f"; not finished: {', '.join(failed) or unfinished}" if unfinished else ""))
    # A preempted sweep exits like a preempted `jaxdict train` (0), to be relaunched.
    return 0 if preempted else unfinished


def _spawn_workers(spec, out, processes, only, group, log) -> list[str]:
    procs = []
    for i in range(processes):
        cmd = [sys.executable, "-m", "jaxdict.cli", "sweep", spec, "--out", str(out), "--worker", f"{i}/{processes}"]
        if only:
            cmd += ["--only", *only]
        if not group:
            cmd.append("--no-group")
        log(f"worker {i}: {' '.join(cmd)}")
        procs.append(subprocess.Popen(cmd, env=dict(os.environ)))

    def forward(signum, frame):  # a preempted sweep: every worker saves its checkpoints and exits
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        codes = [p.wait() for p in procs]
    finally:
        signal.signal(signal.SIGTERM, previous)
    return [f"worker {i} (exit {c})" for i, c in enumerate(codes) if c != 0]
