"""Sweeps: every point of an experiments/*.py sweep, grouped onto shared passes where shapes agree,
skipping finished points and resuming interrupted ones, summarised in `<out>/results.csv`.

    run_sweep("experiments/l1_sweep.py:tiny", "runs/l1-tiny")
"""
from jaxdict.sweep.plan import SweepError, load_points, plan_groups
from jaxdict.sweep.results import RESULT_COLUMNS, result_row, step_compute, write_results
from jaxdict.sweep.runner import run_sweep

__all__ = ["RESULT_COLUMNS", "SweepError", "load_points", "plan_groups", "result_row", "run_sweep",
           "step_compute", "write_results"]
