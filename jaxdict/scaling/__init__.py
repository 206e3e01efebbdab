"""Scaling laws of SAE sweeps: the compute-optimal frontier, power-law fits with bootstrap
intervals, an extrapolation check, plots and a report (numpy + matplotlib only).

    from jaxdict.scaling import fit_sweep
    result = fit_sweep("runs/my-sweep", "report/", metric="final_loss", bootstrap=1000)
"""
from __future__ import annotations

from jaxdict.scaling.errors import ScalingInputError
from jaxdict.scaling.fit_sweep import fit_sweep
from jaxdict.scaling.frontier import compute_optimal_frontier
from jaxdict.scaling.power_law import PowerLaw, SaturatingPowerLaw, fit_power_law, fit_saturating_power_law
from jaxdict.scaling.results_table import ResultsTable, RunRecord, load_results_table

__all__ = [
    "PowerLaw",
    "ResultsTable",
    "RunRecord",
    "SaturatingPowerLaw",
    "ScalingInputError",
    "compute_optimal_frontier",
    "fit_power_law",
    "fit_saturating_power_law",
    "fit_sweep",
    "load_results_table",
]
