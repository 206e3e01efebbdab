"""`fit_sweep`: from a sweep's results table to fitted scaling laws, a report, fit.json and plots."""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxdict.atomic import write_json_atomic
from jaxdict.scaling.bootstrap import bootstrap_parameters, draw_resamples, percentile_interval
from jaxdict.scaling.errors import ScalingInputError
from jaxdict.scaling.frontier import compute_optimal_frontier
from jaxdict.scaling.plots import SweepPoints, plot_frontier_allocation, plot_loss_vs_compute, plot_lr_vs_compute
from jaxdict.scaling.power_law import (
    MIN_POINTS_SATURATING,
    N_PARAMS_SATURATING,
    PowerLaw,
    SaturatingPowerLaw,
    fit_power_law_from_logs,
    fit_saturating_from_log_compute,
    fit_power_law,
    fit_saturating_power_law,
)
from jaxdict.scaling.report import write_report
from jaxdict.scaling.results_table import ResultsTable, load_results_table

CI_LEVEL = 0.95
# Pure power laws fitted at the frontier: run attribute (and fit.json key) -> symbol in formulas.
ALLOCATION_LAWS = {"n_features": "F*", "steps": "S*", "tokens": "D*"}

COMPUTE_LABELS = {
    "flops": ("training FLOPs, the results table's `flops` column: C = 10·d·F·tokens, the dense maths of "
              "the SAE whatever decoder ran (jaxdict.scaling.compute)"),
    "features_x_tokens": ("n_features × training tokens (DESIGN.md §4: C ∝ F × tokens; the FLOPs per unit "
                          "of C, 10·d by jaxdict.scaling.compute, only rescale a, not the exponents)"),
}


def _law_json(law: PowerLaw | SaturatingPowerLaw, symbol: str, samples: dict[str, np.ndarray] | None) -> dict:
    """One fitted law as JSON: parameters, their bootstrap intervals (None without resamples), residual."""
    if isinstance(law, SaturatingPowerLaw):
        params, formula = ("a", "b", "c"), f"{symbol} = a·C^(−b) + c"
    else:
        params, formula = ("a", "b"), f"{symbol} = a·C^b"
    values = {p: getattr(law, p) for p in params}
    if not all(math.isfinite(v) for v in values.values()):
        raise ScalingInputError(
            f"the fit of {formula} did not converge to finite parameters ({values}); the frontier points "
            "do not follow this law over a usable range"
        )
    out: dict[str, Any] = {"formula": formula, "fitted": law.formula(y=symbol)}
    out.update(values)
    out["rms_log_residual"] = law.rms_log_residual
    out["n_points"] = law.n_points
    out["ci"] = {p: (percentile_interval(samples[p], CI_LEVEL) if samples else None) for p in params}
    # Resamples whose refit overflowed are left out of the percentiles; say how many there were.
    out["n_bootstrap_nonfinite"] = (
        int(np.count_nonzero(~np.all([np.isfinite(samples[p]) for p in params], axis=0))) if samples else 0)
    return out


def _check_enough_frontier(frontier_compute: np.ndarray, n_included: int, n_excluded: int, holdout_top: int) -> None:
    distinct = np.unique(frontier_compute).size
    if distinct < MIN_POINTS_SATURATING:
        raise ScalingInputError(
            f"too few points to fit L(C) = a·C^(−b) + c: needs at least {MIN_POINTS_SATURATING} "
            f"compute-optimal frontier runs with distinct compute, got {distinct} (from {n_included} "
            f"usable runs; {n_excluded} excluded). Add runs at more compute budgets."
        )
    if holdout_top and frontier_compute.size - holdout_top < MIN_POINTS_SATURATING:
        raise ScalingInputError(
            f"--holdout-top {holdout_top} leaves {frontier_compute.size - holdout_top} frontier runs for "
            f"the extrapolation fit, which needs at least {MIN_POINTS_SATURATING} (the frontier has "
            f"{frontier_compute.size}); use --holdout-top {max(frontier_compute.size - MIN_POINTS_SATURATING, 0)} "
            "or fewer (0 turns the check off), or add larger runs"
        )


def _extrapolation_check(
    compute: np.ndarray, loss: np.ndarray, holdout_top: int, n_resamples: int, rng: np.random.Generator
) -> tuple[dict, SaturatingPowerLaw]:
    """Refit L(C) on the frontier without its `holdout_top` largest-compute runs and predict those."""
    keep_c, keep_l = compute[:-holdout_top], loss[:-holdout_top]
    fit = fit_saturating_power_law(keep_c, keep_l, what="L(C) without the held-out runs")
    held_c, held_l = compute[-holdout_top:], loss[-holdout_top:]
    predicted = fit(held_c)
    pred_samples = None
    if n_resamples:
        resamples, _ = draw_resamples(keep_c, n_resamples, N_PARAMS_SATURATING, rng)
        pred_samples = np.stack([
            fit_saturating_from_log_compute(np.log(keep_c[idx]), keep_l[idx])(held_c) for idx in resamples
        ])  # [R, holdout_top]
    points = []
    for j in range(holdout_top):
        points.append({
            "compute": float(held_c[j]),
            "measured": float(held_l[j]),
            "predicted": float(predicted[j]),
            "abs_error": float(predicted[j] - held_l[j]),
            "rel_error": float((predicted[j] - held_l[j]) / held_l[j]),
            "predicted_ci": percentile_interval(pred_samples[:, j], CI_LEVEL) if pred_samples is not None else None,
        })
    fit_json = _law_json(fit, "L", None)
    return {"holdout_top": holdout_top, "fit": fit_json, "points": points}, fit


def fit_sweep(
    table_path: str | Path,
    out_dir: str | Path,
    *,
    metric: str = "final_loss",
    bootstrap: int = 1000,
    holdout_top: int = 2,
    seed: int = 0,
    compute: str = "auto",
    where: Mapping[str, str] | None = None,
    make_plots: bool = True,
) -> dict[str, Any]:
    """Fit scaling laws to a sweep and write `report.md`, `fit.json` and plots into `out_dir`.

    Args:
      table_path: a sweep output folder (holding results.csv) or a results CSV file.
      out_dir: created if missing.
      metric: "final_loss" or "fvu", the loss L being fitted.
      bootstrap: number of bootstrap resamples of the frontier for the confidence intervals (0: none).
      holdout_top: frontier runs of largest compute held out of the extrapolation check (0: no check).
      seed: seed of the bootstrap resampling.
      compute: "auto", "flops" or "features_x_tokens" (see `load_results_table`).
      where: {column: value} row filters, e.g. {"arch": "topk", "k": "32"} (see `load_results_table`).
      make_plots: write the PNG and SVG plots.
    Returns:
      the dictionary written to fit.json.
    """
    table, c, loss, attrs = _load_sweep(table_path, metric, compute, where, bootstrap, holdout_top)
    runs = table.included
    frontier = compute_optimal_frontier(c, loss)
    _check_enough_frontier(c[frontier], len(runs), len(table.excluded), holdout_top)
    fc, fl = c[frontier], loss[frontier]
    lr_varies = np.unique(attrs["lr"]).size > 1
    allocation = dict(ALLOCATION_LAWS, **({"lr": "lr*"} if lr_varies else {}))

    loss_fit = fit_saturating_power_law(fc, fl)
    alloc_fits = {k: fit_power_law(fc, attrs[k][frontier], what=f"{sym}(C)") for k, sym in allocation.items()}

    rng = np.random.default_rng(seed)
    samples, n_rejected = _bootstrap_samples(fc, fl, {k: attrs[k][frontier] for k in allocation}, bootstrap, rng)

    extrapolation, holdout_fit = (None, None)
    if holdout_top:
        extrapolation, holdout_fit = _extrapolation_check(fc, fl, holdout_top, bootstrap, rng)
        for j, p in enumerate(extrapolation["points"]):
            p["name"] = runs[int(frontier[len(frontier) - holdout_top + j])].name

    fits = _fits_json(loss_fit, alloc_fits, allocation, samples, lr_varies)
    result: dict[str, Any] = {
        "source": str(table.source),
        "metric": metric,
        "compute_definition": table.compute_definition,
        "compute_label": COMPUTE_LABELS[table.compute_definition],
        **_runs_summary(table, c, loss, frontier),
        "fits": fits,
        "bootstrap": {"n_resamples": bootstrap, "seed": seed, "ci_level": CI_LEVEL,
                      "n_rejected_draws": n_rejected, "min_distinct_compute": N_PARAMS_SATURATING},
        "extrapolation": extrapolation,
        "plots": [],
    }

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if make_plots:
        pts = SweepPoints(compute=c, loss=loss, n_features=attrs["n_features"], steps=attrs["steps"],
                          lr=attrs["lr"], frontier=frontier, compute_label=table.compute_definition,
                          metric=metric)
        result["plots"] = _plots(out, table, pts, loss_fit, holdout_fit, alloc_fits, holdout_top)
    write_json_atomic(out / "fit.json", result, allow_nan=False)
    write_report(out / "report.md", result)
    return result


def _load_sweep(table_path: str | Path, metric: str, compute: str, where: Mapping[str, str] | None,
                bootstrap: int, holdout_top: int) -> tuple[ResultsTable, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The results table after checking the fit's arguments, with the included runs' compute, loss
    and allocation attributes as float64 arrays."""
    if bootstrap < 0:
        raise ScalingInputError(f"--bootstrap must be ≥ 0 resamples, got {bootstrap}")
    if holdout_top < 0:
        raise ScalingInputError(f"--holdout-top must be ≥ 0 runs, got {holdout_top}")
    table: ResultsTable = load_results_table(table_path, metric=metric, compute=compute, where=where)
    runs = table.included
    if not runs:
        raise ScalingInputError(
            f"too few points to fit: all {len(table.runs)} runs of {str(table.source)!r} are excluded "
            f"({'; '.join(f'{r.name}: {r.excluded_reason}' for r in table.excluded[:10])}); "
            f"the fit needs at least {MIN_POINTS_SATURATING} frontier runs"
        )
    c = np.array([table.compute(r) for r in runs], dtype=np.float64)
    loss = np.array([r.loss for r in runs], dtype=np.float64)
    attrs = {
        "n_features": np.array([r.n_features for r in runs], dtype=np.float64),
        "steps": np.array([r.steps for r in runs], dtype=np.float64),
        "tokens": np.array([r.tokens for r in runs], dtype=np.float64),
        "lr": np.array([r.lr for r in runs], dtype=np.float64),
    }
    return table, c, loss, attrs


def _fits_json(loss_fit, alloc_fits: dict, allocation: dict[str, str],
               samples: dict[str, dict[str, np.ndarray]] | None, lr_varies: bool) -> dict[str, Any]:
    """fit.json's "fits": L(C) and each allocation law, with bootstrap intervals where sampled."""
    fits: dict[str, Any] = {"loss": _law_json(loss_fit, "L", samples["loss"] if samples else None)}
    for key, sym in allocation.items():
        fits[key] = _law_json(alloc_fits[key], sym, samples[key] if samples else None)
    if not lr_varies:
        fits["lr"] = None
    return fits


def _bootstrap_samples(fc: np.ndarray, fl: np.ndarray, frontier_attrs: dict[str, np.ndarray], bootstrap: int,
                       rng: np.random.Generator) -> tuple[dict[str, dict[str, np.ndarray]] | None, int]:
    """Bootstrap parameter samples of L(C) ("loss") and of each allocation law, and how many draws
    were redrawn; (None, 0) when `bootstrap` is 0."""
    if not bootstrap:
        return None, 0
    # 3 distinct compute values identify the 3 parameters of L(C); the pure laws need only 2.
    resamples, n_rejected = draw_resamples(fc, bootstrap, N_PARAMS_SATURATING, rng)
    log_fc = np.log(fc)
    samples = {"loss": bootstrap_parameters(
        lambda idx: _law_params(fit_saturating_from_log_compute(log_fc[idx], fl[idx]), ("a", "b", "c")),
        resamples)}
    for key, y in frontier_attrs.items():
        log_y = np.log(y)
        samples[key] = bootstrap_parameters(
            lambda idx, ly=log_y: _law_params(fit_power_law_from_logs(log_fc[idx], ly[idx]), ("a", "b")),
            resamples)
    return samples, n_rejected


def _runs_summary(table: ResultsTable, c: np.ndarray, loss: np.ndarray, frontier: np.ndarray) -> dict[str, Any]:
    """The fit.json entries that describe the table's runs: counts, filters, mixed settings,
    exclusions, repeated data, every used run and the frontier."""
    runs = table.included
    frontier_set = set(frontier.tolist())
    return {
        "n_runs": len(table.runs),
        "n_included": len(runs),
        "where": dict(table.where),
        "n_filtered_out": table.n_filtered_out,
        "mixed_settings": {
            field: values for field in ("arch", "k", "l1_coeff")
            if len(values := sorted({getattr(r, field) for r in runs})) > 1
        },
        "lr_values": sorted({r.lr for r in runs}),
        "excluded": [{"name": r.name, "reason": r.excluded_reason} for r in table.excluded],
        # Runs that read their training split more than once: the fits assume fresh tokens.
        "epochs_recorded": all(r.epochs is not None for r in runs),
        "repeated_data": [{"name": r.name, "epochs": r.epochs} for r in runs if r.epochs is not None and r.epochs > 1],
        # Every used run, so that plots can be redrawn from fit.json alone.
        "runs": [
            {"name": r.name, "n_features": r.n_features, "steps": r.steps, "tokens": r.tokens, "lr": r.lr,
             "epochs": r.epochs, "compute": float(c[i]), "loss": float(loss[i]), "on_frontier": i in frontier_set}
            for i, r in enumerate(runs)
        ],
        "frontier": [
            {"name": runs[i].name, "arch": runs[i].arch, "n_features": runs[i].n_features,
             "steps": runs[i].steps, "tokens": runs[i].tokens, "lr": runs[i].lr,
             "compute": float(c[i]), "loss": float(loss[i])}
            for i in frontier
        ],
    }


def _plots(out: Path, table: ResultsTable, pts: SweepPoints, loss_fit, holdout_fit, alloc_fits: dict,
           holdout_top: int) -> list[str]:
    """Write the PNG/SVG plots; their file names."""
    frontier = pts.frontier
    excl = [r for r in table.excluded if math.isfinite(r.loss) and r.loss > 0 and _excluded_compute(table, r)]
    paths = plot_loss_vs_compute(
        out, pts, loss_fit, holdout_fit, frontier[len(frontier) - holdout_top:] if holdout_top else np.array([], int),
        np.array([_excluded_compute(table, r) for r in excl], dtype=np.float64),
        np.array([r.loss for r in excl], dtype=np.float64))
    paths += plot_frontier_allocation(out, pts, alloc_fits["n_features"], alloc_fits["steps"])
    if "lr" in alloc_fits:
        paths += plot_lr_vs_compute(out, pts, alloc_fits["lr"])
    return [p.name for p in paths]


def _law_params(law: PowerLaw | SaturatingPowerLaw, names: tuple[str, ...]) -> dict[str, float]:
    """The named parameters of a fitted law, for `bootstrap_parameters`."""
    return {n: getattr(law, n) for n in names}


def _excluded_compute(table: ResultsTable, run) -> float | None:
    """Compute of an excluded run for plotting it, or None when its row lacks the numbers."""
    if table.compute_definition == "flops":
        return run.flops
    value = float(run.n_features) * run.tokens
    return value if math.isfinite(value) and value > 0 else None
