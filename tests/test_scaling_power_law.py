"""Power-law fitters: exact recovery without noise, recovery within bootstrap intervals with noise."""
import numpy as np
import pytest

from jaxdict.scaling import ScalingInputError, fit_power_law, fit_saturating_power_law
from jaxdict.scaling.bootstrap import bootstrap_parameters, draw_resamples, percentile_interval
from jaxdict.scaling.power_law import fit_saturating_from_log_compute


def test_saturating_fit_is_exact_on_noise_free_points():
    compute = np.geomspace(1.0, 1e6, 12)
    loss = 2.0 * compute**-0.3 + 0.1
    law = fit_saturating_power_law(compute, loss)
    np.testing.assert_allclose([law.a, law.b, law.c], [2.0, 0.3, 0.1], rtol=1e-6)
    assert law.rms_log_residual < 1e-8
    np.testing.assert_allclose(law(compute), loss, rtol=1e-8)


def test_saturating_fit_handles_large_compute_and_zero_floor():
    # FLOP counts of real sweeps (1e12–1e18) and a law without irreducible term (c = 0 boundary).
    compute = np.geomspace(1e12, 1e18, 10)
    loss = 5e3 * compute**-0.25
    law = fit_saturating_power_law(compute, loss)
    assert law.b == pytest.approx(0.25, rel=1e-5)
    assert law.a == pytest.approx(5e3, rel=1e-4)
    assert 0.0 <= law.c < 1e-6 * loss.min()


def test_saturating_fit_recovers_exponents_within_bootstrap_interval():
    rng = np.random.default_rng(1234)
    compute = np.geomspace(1.0, 1e6, 20)
    loss = (2.0 * compute**-0.3 + 0.1) * np.exp(rng.normal(0.0, 0.01, compute.size))  # 1 % noise
    law = fit_saturating_power_law(compute, loss)
    resamples, _ = draw_resamples(compute, 400, 3, rng)
    samples = bootstrap_parameters(
        lambda idx: {"a": (f := fit_saturating_from_log_compute(np.log(compute[idx]), loss[idx])).a,
                     "b": f.b, "c": f.c},
        resamples,
    )
    for name, truth in (("a", 2.0), ("b", 0.3), ("c", 0.1)):
        lo, hi = percentile_interval(samples[name])
        assert lo <= truth <= hi, (name, truth, lo, hi)
        assert lo <= getattr(law, name) <= hi
    assert law.b == pytest.approx(0.3, abs=0.03)
    assert law.c == pytest.approx(0.1, abs=0.01)
    # The intervals are informative, not the whole parameter range.
    lo, hi = percentile_interval(samples["b"])
    assert hi - lo < 0.15


def test_pure_power_law_fit_exact_and_noisy():
    compute = np.geomspace(1e9, 1e15, 8)
    law = fit_power_law(compute, 0.5 * compute**0.6)
    assert law.b == pytest.approx(0.6, rel=1e-12)
    assert law.a == pytest.approx(0.5, rel=1e-9)
    rng = np.random.default_rng(0)
    noisy = 0.5 * compute**0.6 * np.exp(rng.normal(0.0, 0.05, compute.size))
    assert fit_power_law(compute, noisy).b == pytest.approx(0.6, abs=0.03)
    assert fit_power_law(compute, np.full(compute.size, 3e-4)).b == pytest.approx(0.0, abs=1e-12)


def test_too_few_points_says_how_many_are_needed():
    with pytest.raises(ScalingInputError, match="needs at least 4 .* got 3"):
        fit_saturating_power_law(np.array([1.0, 2.0, 4.0]), np.array([3.0, 2.0, 1.5]))
    # Repeated compute values do not count as separate points.
    with pytest.raises(ScalingInputError, match="needs at least 3 .* got 2 \\(of 4 points\\)"):
        fit_power_law(np.array([1.0, 1.0, 2.0, 2.0]), np.array([1.0, 1.1, 2.0, 2.1]))


def test_non_positive_points_are_rejected():
    with pytest.raises(ScalingInputError, match="positive and finite"):
        fit_power_law(np.array([1.0, 2.0, 3.0]), np.array([1.0, np.nan, 2.0]))
    with pytest.raises(ScalingInputError, match="positive and finite"):
        fit_saturating_power_law(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 0.0, 2.0, 1.0]))


def test_percentile_interval_and_resampling_rules():
    assert percentile_interval(np.arange(101.0)) == pytest.approx((2.5, 97.5))
    assert percentile_interval(np.array([np.nan])) is None
    rng = np.random.default_rng(0)
    compute = np.array([1.0, 2.0, 3.0, 4.0])
    idx, rejected = draw_resamples(compute, 200, 3, rng)
    assert idx.shape == (200, 4)
    assert all(np.unique(compute[row]).size >= 3 for row in idx)
    assert rejected > 0  # P(fewer than 3 distinct of 4 draws) = 88/256, so some draws were redrawn
    with pytest.raises(ScalingInputError, match="too few resamples"):
        draw_resamples(np.array([1.0, 2.0]), 10, 3, rng)
