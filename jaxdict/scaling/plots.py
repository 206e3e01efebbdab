"""Log-log plots of a sweep: loss against compute, the frontier's F* and S*, and lr* (PNG + SVG).

Figures are built on matplotlib's object API with an explicit Agg canvas, so plotting never switches
the global pyplot backend of a notebook that calls `fit_sweep`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from jaxdict.scaling.power_law import PowerLaw, SaturatingPowerLaw

FORMATS = ("png", "svg")
_CMAP = "viridis"


@dataclasses.dataclass(frozen=True)
class SweepPoints:
    """The included runs of a sweep as arrays ([n] each) and the frontier's indices into them."""

    compute: np.ndarray
    loss: np.ndarray
    n_features: np.ndarray
    steps: np.ndarray
    lr: np.ndarray
    frontier: np.ndarray  # int [m], sorted by compute
    compute_label: str
    metric: str


def _new_figure(ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(6.4 * ncols, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.25)
    return fig, axes


def _feature_norm(n_features: np.ndarray) -> LogNorm:
    lo, hi = float(n_features.min()), float(n_features.max())
    return LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 2.0)


def _scatter_runs(ax, fig, x, y, n_features, frontier, norm, colorbar: bool) -> None:
    """All runs coloured by F (faint), frontier runs opaque with a black edge, one colour bar."""
    ax.scatter(x, y, c=n_features, cmap=_CMAP, norm=norm, s=22, alpha=0.45, linewidths=0)
    sc = ax.scatter(x[frontier], y[frontier], c=n_features[frontier], cmap=_CMAP, norm=norm, s=60,
                    edgecolors="black", linewidths=1.0, zorder=3, label="compute-optimal frontier")
    if colorbar:
        fig.colorbar(sc, ax=ax, label="dictionary size F (n_features)")


def _curve_x(compute: np.ndarray) -> np.ndarray:
    return np.geomspace(compute.min() / 1.5, compute.max() * 1.5, 200)


def _save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    paths = []
    for fmt in FORMATS:
        path = out_dir / f"{stem}.{fmt}"
        # No timestamp in the SVG, so that rerunning a fit on the same table gives the same file.
        fig.savefig(path, format=fmt, dpi=150, metadata={"Date": None} if fmt == "svg" else None)
        paths.append(path)
    return paths


def plot_loss_vs_compute(
    out_dir: Path,
    pts: SweepPoints,
    fit: SaturatingPowerLaw,
    holdout_fit: SaturatingPowerLaw | None,
    holdout: np.ndarray,
    excluded_compute: np.ndarray,
    excluded_loss: np.ndarray,
) -> list[Path]:
    """L(C): every run coloured by F, the frontier line, the fit, and the held-out extrapolation."""
    fig, (ax,) = _new_figure()
    norm = _feature_norm(pts.n_features)
    _scatter_runs(ax, fig, pts.compute, pts.loss, pts.n_features, pts.frontier, norm, colorbar=True)
    f = pts.frontier
    ax.plot(pts.compute[f], pts.loss[f], color="black", linewidth=0.8, alpha=0.6, zorder=2)
    xs = _curve_x(pts.compute)
    ax.plot(xs, fit(xs), "r--", linewidth=1.5, label=f"fit: {fit.formula()}")
    if holdout_fit is not None and holdout.size:
        ax.plot(xs, holdout_fit(xs), ":", color="tab:orange", linewidth=1.5,
                label=f"fit without top {holdout.size} (extrapolation check)")
        ax.scatter(pts.compute[holdout], pts.loss[holdout], marker="D", s=110, facecolors="none",
                   edgecolors="tab:orange", linewidths=1.5, zorder=4, label="held-out frontier runs")
    # The axis spans the runs that were fitted: a diverged run's loss (often 1e30 or so) must not
    # squash them into one line. Excluded runs beyond it are pinned to the edge as triangles.
    y_lo, y_hi = float(pts.loss.min()) / 1.25, float(pts.loss.max()) * 1.25
    ax.set_ylim(y_lo, y_hi)
    if excluded_compute.size:
        inside = (excluded_loss >= y_lo) & (excluded_loss <= y_hi)
        if np.any(inside):
            ax.scatter(excluded_compute[inside], excluded_loss[inside], marker="x", color="grey", s=30,
                       label="excluded (diverged)", zorder=1)
        if np.any(~inside):
            ax.scatter(excluded_compute[~inside], np.clip(excluded_loss[~inside], y_lo, y_hi), marker="^",
                       color="grey", s=40, clip_on=False, zorder=1, label="excluded (diverged), loss off scale")
    ax.set_xlabel(f"compute C ({pts.compute_label})")
    ax.set_ylabel(pts.metric)
    ax.set_title(f"{pts.metric} against compute")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, out_dir, "loss_vs_compute")


def plot_frontier_allocation(
    out_dir: Path, pts: SweepPoints, features_fit: PowerLaw, steps_fit: PowerLaw
) -> list[Path]:
    """F*(C) and S*(C): the dictionary size and step count of frontier runs, with power-law fits."""
    fig, (ax_f, ax_s) = _new_figure(ncols=2)
    norm = _feature_norm(pts.n_features)
    xs = _curve_x(pts.compute)
    for ax, y, fit, label, name in (
        (ax_f, pts.n_features, features_fit, "dictionary size F", "F*"),
        (ax_s, pts.steps, steps_fit, "training steps S", "S*"),
    ):
        _scatter_runs(ax, fig, pts.compute, y.astype(np.float64), pts.n_features, pts.frontier, norm,
                      colorbar=ax is ax_s)
        ax.plot(xs, fit(xs), "r--", linewidth=1.5, label=f"fit: {fit.formula(y=name)}")
        ax.set_xlabel(f"compute C ({pts.compute_label})")
        ax.set_ylabel(label)
        ax.set_title(f"{name}(C): compute-optimal {label}")
        ax.legend(fontsize=7, loc="best")
    return _save(fig, out_dir, "frontier_features_steps")


def plot_lr_vs_compute(out_dir: Path, pts: SweepPoints, lr_fit: PowerLaw) -> list[Path]:
    """lr*(C): learning rate of every run coloured by F, frontier runs marked, power-law fit."""
    fig, (ax,) = _new_figure()
    norm = _feature_norm(pts.n_features)
    _scatter_runs(ax, fig, pts.compute, pts.lr, pts.n_features, pts.frontier, norm, colorbar=True)
    xs = _curve_x(pts.compute)
    ax.plot(xs, lr_fit(xs), "r--", linewidth=1.5, label=f"fit: {lr_fit.formula(y='lr*')}")
    ax.set_xlabel(f"compute C ({pts.compute_label})")
    ax.set_ylabel("learning rate")
    ax.set_title("lr*(C): learning rate along the compute-optimal frontier")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, out_dir, "lr_vs_compute")
