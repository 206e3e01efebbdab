"""Power-law fits in numpy only (no scipy): a pure power law and one with an irreducible term.

Both fits minimise squared residuals of log y: sweep results scatter multiplicatively (a loss of 0.1
and one of 10 are measured to similar relative precision), and it is the usual choice for
scaling-law fits (Hoffmann et al. 2022, App. D.2, fit log-loss residuals).

The saturating law L(C) = a·C^(−b) + c is fitted in two stages, robust to the starting point:
  1. profile over c: for each c on a grid in [0, min L), log(L − c) = log a − b·log C is linear, so
     (a, b) come from ordinary least squares; keep the c with the smallest log-residual;
  2. polish (log a, b, c) with Levenberg–Marquardt, c kept inside [0, min L).
log C is centred before fitting (compute spans 1e9–1e20 FLOPs), and `a` is mapped back after.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxdict.scaling.errors import ScalingInputError

# Fewest points (with distinct compute) a fit accepts: one more than its free parameters, so that
# the residual says something about the fit.
MIN_POINTS_POWER_LAW = 3
MIN_POINTS_SATURATING = 4
# A resample needs this many distinct compute values to identify (a, b, c); bootstrap refits may be exact.
N_PARAMS_SATURATING = 3

_C_GRID = np.linspace(0.0, 1.0 - 1e-3, 400)  # c / min(L) candidates of stage 1
_C_MAX_FRACTION = 1.0 - 1e-9  # c must stay below min(L) for log(L − c) to exist


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """y = a · x^b."""

    a: float
    b: float
    rms_log_residual: float
    n_points: int

    def __call__(self, x: np.ndarray | float) -> np.ndarray:
        return self.a * np.power(np.asarray(x, dtype=np.float64), self.b)

    def formula(self, x: str = "C", y: str = "y") -> str:
        return f"{y} = {self.a:.4g} · {x}^{self.b:.4f}"


@dataclasses.dataclass(frozen=True)
class SaturatingPowerLaw:
    """L = a · C^(−b) + c (c: irreducible loss)."""

    a: float
    b: float
    c: float
    rms_log_residual: float
    n_points: int

    def __call__(self, x: np.ndarray | float) -> np.ndarray:
        return self.a * np.power(np.asarray(x, dtype=np.float64), -self.b) + self.c

    def formula(self, x: str = "C", y: str = "L") -> str:
        return f"{y} = {self.a:.4g} · {x}^(−{self.b:.4f}) + {self.c:.4g}"


def _check_points(x: np.ndarray, y: np.ndarray, needed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"{what}: x and y must be 1-D of one length, got {x.shape} and {y.shape}")
    bad = ~(np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0))
    if np.any(bad):
        raise ScalingInputError(
            f"{what}: all points must be positive and finite; bad points (x, y): "
            f"{list(zip(x[bad].tolist(), y[bad].tolist()))[:5]}"
        )
    distinct = np.unique(x).size
    if distinct < needed:
        raise ScalingInputError(
            f"{what}: too few points to fit: needs at least {needed} points with distinct compute, "
            f"got {distinct} (of {x.size} points)"
        )
    return x, y


def fit_power_law(x: np.ndarray, y: np.ndarray, what: str = "power law") -> PowerLaw:
    """Least-squares fit of log y = log a + b·log x. x, y: [n] positive; n ≥ MIN_POINTS_POWER_LAW."""
    x, y = _check_points(x, y, MIN_POINTS_POWER_LAW, what)
    return fit_power_law_from_logs(np.log(x), np.log(y))


def fit_power_law_from_logs(lx: np.ndarray, ly: np.ndarray) -> PowerLaw:
    """`fit_power_law` on log x, log y ([n] each) without input checks (for bootstrap loops)."""
    x0 = lx.mean()
    u = lx - x0
    b = float(np.dot(u, ly - ly.mean()) / np.dot(u, u))
    log_a = float(ly.mean() - b * x0)
    resid = ly - (log_a + b * lx)
    return PowerLaw(a=float(np.exp(log_a)), b=b, rms_log_residual=float(np.sqrt(np.mean(resid**2))), n_points=lx.size)


def _profile_over_c(u: np.ndarray, loss: np.ndarray) -> tuple[float, float, float]:
    """Stage 1: best (alpha, b, c) over the c grid, alpha = log of the amplitude at centred u = 0."""
    cs = _C_GRID * loss.min()  # [G]
    z = np.log(loss[None, :] - cs[:, None])  # [G, n]
    uc = u - u.mean()
    slope = (z - z.mean(axis=1, keepdims=True)) @ uc / np.dot(uc, uc)  # [G], = −b
    alpha = z.mean(axis=1) - slope * u.mean()
    pred = np.exp(alpha[:, None] + slope[:, None] * u[None, :]) + cs[:, None]
    sse = np.sum((np.log(loss)[None, :] - np.log(pred)) ** 2, axis=1)
    j = int(np.argmin(sse))
    return float(alpha[j]), float(-slope[j]), float(cs[j])


def _levenberg_marquardt(u: np.ndarray, loss: np.ndarray, theta: np.ndarray, c_max: float) -> np.ndarray:
    """Stage 2: minimise Σ (log L − log(e^(α − b·u) + c))² over θ = (α, b, c), c ∈ [0, c_max]."""
    log_loss = np.log(loss)

    def residual_and_jacobian(th: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.exp(th[0] - th[1] * u)
        m = p + th[2]
        r = log_loss - np.log(m)
        jac = -np.stack([p, -u * p, np.ones_like(u)], axis=1) / m[:, None]  # dr/dθ, [n, 3]
        return r, jac

    def project(th: np.ndarray) -> np.ndarray:
        return np.array([th[0], th[1], min(max(th[2], 0.0), c_max)])

    theta = project(theta)
    r, jac = residual_and_jacobian(theta)
    sse = float(r @ r)
    damping = 1e-3
    for _ in range(200):
        jtj = jac.T @ jac
        grad = jac.T @ r
        try:
            step = np.linalg.solve(jtj + damping * np.diag(np.diag(jtj) + 1e-12), -grad)
        except np.linalg.LinAlgError:
            damping *= 10.0
            continue
        cand = project(theta + step)
        r_new, jac_new = residual_and_jacobian(cand)
        sse_new = float(r_new @ r_new)
        if np.isfinite(sse_new) and sse_new < sse:
            converged = sse - sse_new <= 1e-14 * max(sse, 1e-300)
            theta, r, jac, sse = cand, r_new, jac_new, sse_new
            damping = max(damping / 3.0, 1e-12)
            if converged:
                break
        else:
            damping *= 4.0
            if damping > 1e12:
                break
    return theta


def fit_saturating_power_law(compute: np.ndarray, loss: np.ndarray, what: str = "L(C)") -> SaturatingPowerLaw:
    """Fit L = a·C^(−b) + c, 0 ≤ c < min L. compute, loss: [n] positive; ≥ MIN_POINTS_SATURATING distinct C."""
    compute, loss = _check_points(compute, loss, MIN_POINTS_SATURATING, what)
    return fit_saturating_from_log_compute(np.log(compute), loss)


def fit_saturating_from_log_compute(log_c: np.ndarray, loss: np.ndarray) -> SaturatingPowerLaw:
    """`fit_saturating_power_law` on log C and L ([n] each) without input checks (for bootstrap loops)."""
    x0 = float(log_c.mean())
    u = log_c - x0
    alpha, b, c = _profile_over_c(u, loss)
    theta = _levenberg_marquardt(u, loss, np.array([alpha, b, c]), c_max=_C_MAX_FRACTION * float(loss.min()))
    alpha, b, c = (float(v) for v in theta)
    resid = np.log(loss) - np.log(np.exp(alpha - b * u) + c)
    # amplitude at centred u = 0 is a·C0^(−b) with log C0 = x0, so log a = α + b·x0.
    return SaturatingPowerLaw(
        a=float(np.exp(alpha + b * x0)), b=b, c=c,
        rms_log_residual=float(np.sqrt(np.mean(resid**2))), n_points=int(loss.size),
    )
