"""Each row's k largest as a mask by a counting search (jaxdict/sae/row_topk.py): the same set as
lax.top_k over the valid entries — ties to the lower column, -inf, fewer valid entries than k, row
counts that are not a multiple of the search's block — on one device, on a 2x4 mesh (all-to-all of
whole rows) and on meshes whose rows do not split evenly over `model` (lax.top_k fallback)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxdict.sae import row_topk
from jaxdict.sae.auxk import selection_mask
from jaxdict.train.mesh import make_mesh


def top_k_set(values: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """The reference: lax.top_k over the valid entries (invalid at -inf), then only valid picks."""
    masked = jnp.where(jnp.asarray(valid)[None, :], jnp.asarray(values), -jnp.inf)
    _, positions = lax.top_k(masked, k)
    want = np.zeros(values.shape, bool)
    want[np.arange(values.shape[0])[:, None], np.asarray(positions)] = True
    return want & valid[None, :]


CASES = ["normal", "ties", "all-equal", "minus-inf", "few-valid", "huge", "one", "tie-in-one-block"]


def make_values(case: str, rows: int, cols: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    valid = rng.random(cols) < 0.8
    k = {"one": 1, "few-valid": min(int(valid.sum()) + 3, cols - 1)}.get(case, int(rng.integers(2, cols - 4)))
    if case == "normal" or case == "one" or case == "few-valid":
        z = rng.standard_normal((rows, cols))
    elif case == "ties":
        z = rng.integers(-4, 4, size=(rows, cols)) * 0.5
    elif case == "all-equal":
        z = np.full((rows, cols), -3.0)
    elif case == "minus-inf":  # valid -inf entries tie with the invalid ones: the lower column first
        z = np.where(rng.random((rows, cols)) < 0.7, -np.inf, rng.standard_normal((rows, cols)))
    elif case == "huge":
        z = rng.standard_normal((rows, cols)) * 1e30
    else:  # distinct values except one row of the second block, tied across its k-th value
        z = rng.standard_normal((rows, cols))
        z[rows - 1, :] = np.round(z[rows - 1, :])
    return z.astype(np.float32), valid, k


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("rows", [40, 7])
def test_mask_equals_lax_top_k_on_one_device(case, rows):
    rng = np.random.default_rng([CASES.index(case), rows])
    z, valid, k = make_values(case, rows, 48, rng)
    got = row_topk.topk_mask(jnp.asarray(z), jnp.asarray(valid), k, None, 1)
    np.testing.assert_array_equal(np.asarray(got), top_k_set(z, valid, k))


@pytest.mark.parametrize("case", CASES)
def test_the_accelerator_form_equals_lax_top_k(case):
    """Off the CPU the search runs over all rows at once with its passes unrolled (row_topk's
    docstring): compiled here, on the CPU, it must pick lax.top_k's set as the blocked form does."""
    rng = np.random.default_rng([CASES.index(case), 40, 1])
    z, valid, k = make_values(case, 40, 48, rng)
    accelerator_form = jax.jit(lambda a, v: row_topk.row_topk_mask(a, v, k, on_cpu=False))
    got = accelerator_form(jnp.asarray(z), jnp.asarray(valid))
    np.testing.assert_array_equal(np.asarray(got), top_k_set(z, valid, k))
    # One block, no loop: the compiled program has no while (the CPU form has two nested).
    hlo = accelerator_form.lower(jnp.asarray(z), jnp.asarray(valid)).compile().as_text()
    assert " while(" not in hlo


def test_the_program_is_compiled_for_the_platform_it_runs_on():
    assert row_topk.runs_on_cpu(None) == (jax.default_backend() == "cpu")
    assert row_topk.runs_on_cpu(make_mesh(1, 1, devices=jax.devices()[:1]))


def test_kth_largest_key_is_the_kth_largest_value():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((8, 100)).astype(np.float32)
    z[0, :] = -np.abs(z[0, :])  # a row with only negative values
    keys = row_topk.order_keys(jnp.asarray(z), jnp.ones((1, 100), bool))
    kth = np.asarray(row_topk.kth_largest_key(keys, 17))
    want = np.sort(z, axis=1)[:, -17]
    want_keys = np.asarray(row_topk.order_keys(jnp.asarray(want), jnp.ones((), bool)))
    np.testing.assert_array_equal(kth, want_keys)


@pytest.mark.parametrize("case", ["normal", "ties", "minus-inf", "few-valid"])
@pytest.mark.parametrize("mesh_shape,rows", [((2, 4), 16), ((1, 8), 12), ((2, 4), 6)])
def test_sharded_selection_equals_lax_top_k(case, mesh_shape, rows, devices):
    """2x4 with 8 rows per data shard: the all-to-all path; (1, 8) with 12 rows and (2, 4) with 3
    rows per shard do not split over `model`: the lax.top_k fallback. Either way AuxK's mask is
    lax.top_k's set."""
    rng = np.random.default_rng([CASES.index(case), rows, mesh_shape[1]])
    z, valid, k = make_values(case, rows, 64, rng)
    mesh = make_mesh(*mesh_shape, devices=jax.devices()[:8])
    got = jax.jit(lambda a, v: selection_mask(a, v, k, mesh))(jnp.asarray(z), jnp.asarray(valid))
    np.testing.assert_array_equal(np.asarray(got), top_k_set(z, valid, k))


def test_under_vmap_equals_each_member():
    """A sweep axis vmaps AuxK: the blocked search and its tie branch must batch."""
    rng = np.random.default_rng(9)
    z = np.stack([make_values("ties", 32, 40, rng)[0], make_values("normal", 32, 40, rng)[0]])
    valid = rng.random(40) < 0.9
    got = jax.vmap(lambda a: row_topk.topk_mask(a, jnp.asarray(valid), 11, None, 1))(jnp.asarray(z))
    accelerator_form = jax.vmap(lambda a: row_topk.row_topk_mask(a, jnp.asarray(valid), 11, on_cpu=False))
    for member in range(2):
        np.testing.assert_array_equal(np.asarray(got[member]), top_k_set(z[member], valid, 11))
        np.testing.assert_array_equal(np.asarray(accelerator_form(jnp.asarray(z))[member]), top_k_set(z[member], valid, 11))
