"""The compute-optimal frontier on hand-made tables."""
import numpy as np
import pytest

from jaxdict.scaling import compute_optimal_frontier


def test_frontier_on_hand_made_table():
    #                 0    1    2    3    4    5    6    7
    compute = np.array([1.0, 1.0, 2.0, 3.0, 3.0, 4.0, 5.0, 6.0])
    loss = np.array([5.0, 4.0, 4.5, 3.0, 3.0, 3.5, 2.0, 2.0])
    # 0: beaten by 1 at equal compute; 2: beaten by 1 (less compute, lower loss); 3 and 4 tie and
    # both stay; 5: beaten by 3; 7: no run with ≤ compute is strictly lower (6 equals it), so it stays.
    np.testing.assert_array_equal(compute_optimal_frontier(compute, loss), [1, 3, 4, 6, 7])


def test_frontier_does_not_depend_on_row_order():
    rng = np.random.default_rng(0)
    compute = rng.choice([1.0, 2.0, 4.0, 8.0, 16.0], size=30)
    loss = 10.0 / compute + rng.uniform(0.0, 3.0, size=30)
    expected = {(compute[i], loss[i]) for i in compute_optimal_frontier(compute, loss)}
    perm = rng.permutation(30)
    got = compute_optimal_frontier(compute[perm], loss[perm])
    assert {(compute[perm][i], loss[perm][i]) for i in got} == expected
    # Along the frontier compute rises and loss strictly falls (no ties in this random table).
    f = compute_optimal_frontier(compute, loss)
    assert np.all(np.diff(compute[f]) > 0) and np.all(np.diff(loss[f]) < 0)
    # Brute force against the definition.
    brute = [i for i in range(30) if not np.any((compute <= compute[i]) & (loss < loss[i]))]
    assert sorted(f.tolist()) == sorted(brute)


def test_frontier_rejects_non_finite_input():
    with pytest.raises(ValueError, match="finite"):
        compute_optimal_frontier(np.array([1.0, 2.0]), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="1-D of one length"):
        compute_optimal_frontier(np.array([1.0, 2.0]), np.array([1.0]))
