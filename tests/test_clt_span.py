"""decoder_span: each CLT feature writes to at most S output layers. S = 1 is per-layer transcoders on
resid_mid.l, the baseline a CLT is reported beside (issue 17 item 6): the loss equals its written
formula with the capped blocks, an output layer reads only its own input at S = 1, the sharded step
equals one device, the sparse TopK decode equals the dense one, the decoder-mass report says "per
layer", and the circuit-tracer export pads the missing blocks with zeros."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdict.clt.circuit_tracer_io import export_clt_circuit_tracer, import_clt_circuit_tracer
from jaxdict.clt.config import CLTConfig, CLTConfigError
from jaxdict.clt.evaluate import decoder_mass
from jaxdict.clt.forward import clt_loss, forward
from jaxdict.clt.params import init_params
from jaxdict.clt.planted import planted_clt_rows
from jaxdict.clt.replacement import reconstruct
from jaxdict.clt.step import CLTTrainer, split_rows
from jaxdict.train.mesh import make_mesh

L, D, F, BATCH = 4, 8, 16, 16


def _cfg(span, **kw):
    kw = {"arch": "topk", "k": 3, **kw}
    return CLTConfig(n_layers=L, d_model=D, n_features=F, decoder_span=span, **kw)


def _perturbed(cfg, seed=1):
    params = init_params(cfg, jax.random.PRNGKey(seed))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 7), len(leaves))
    return jax.tree.unflatten(tree, [leaf + 0.05 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)])


def _rows(n, seed):
    return jnp.asarray(planted_clt_rows(n, L, D, seed=seed))


def test_blocks_and_shapes_follow_the_span():
    for span, blocks in ((None, 10), (4, 10), (2, 7), (1, 4)):
        cfg = _cfg(span)
        assert cfg.n_decoder_blocks == blocks
        shapes = [w.shape for w in jax.eval_shape(lambda key: init_params(cfg, key), jax.random.PRNGKey(0)).W_dec]
        assert shapes == [(F, min(L - layer, span or L), D) for layer in range(L)]


@pytest.mark.parametrize("span", [1, 2])
def test_loss_matches_the_written_formula_with_capped_blocks(span):
    """ŷ_l' = Σ_{l' − S < l ≤ l'} a_l W_dec[l][:, l' − l] + b_dec[l'], in float64 numpy."""
    cfg = _cfg(span)
    params = _perturbed(cfg)
    x, y = split_rows(_rows(BATCH, 2), cfg)
    loss, (out, _) = jax.jit(clt_loss, static_argnums=3)(params, x, y, cfg)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)
    z = np.einsum("bld,ldf->blf", xn, p.W_enc) + p.b_enc[None]
    kth = -np.sort(-z, axis=-1)[..., cfg.k - 1:cfg.k]
    a = np.maximum(z, 0) * (z >= kth)
    y_hat = np.zeros_like(yn) + p.b_dec[None]
    for out_layer in range(L):
        for source in range(max(0, out_layer - span + 1), out_layer + 1):
            y_hat[:, out_layer] += a[:, source] @ p.W_dec[source][:, out_layer - source]
    np.testing.assert_allclose(np.asarray(out.y_hat), y_hat, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(loss), np.mean(np.sum((yn - y_hat) ** 2, axis=(1, 2))), rtol=1e-5)


def test_span_one_output_layer_reads_only_its_own_input():
    cfg = _cfg(1, arch="jumprelu", k=None, init_threshold=0.05)
    params = _perturbed(cfg)
    x, _ = split_rows(_rows(BATCH, 3), cfg)
    base = forward(params, x, cfg).y_hat
    moved = forward(params, x.at[:, 0].add(1.0), cfg).y_hat
    np.testing.assert_array_equal(moved[:, 1:], base[:, 1:])
    assert float(jnp.max(jnp.abs(moved[:, 0] - base[:, 0]))) > 1e-3


OPTIMIZER = optax.adam(1e-2, eps=1e-4)  # tests/test_clt_step.py's reasoning for eps


def _run(cfg, mesh_shape, data):
    mesh = make_mesh(*mesh_shape, devices=jax.devices()[: mesh_shape[0] * mesh_shape[1]])
    trainer = CLTTrainer(cfg, OPTIMIZER, mesh)
    params, opt_state = trainer.init(seed=3)
    for batch in data:
        params, opt_state, _ = trainer.step(params, opt_state, jax.device_put(batch, trainer.batch_sharding))
    return jax.device_get(params)


def test_sharded_sparse_step_equals_one_device_and_the_dense_decode(devices):
    """Span 2, TopK: the sparse decode on 2×4 equals the sparse decode on 1×1 and the dense one."""
    data = planted_clt_rows(3 * BATCH, L, D, seed=5).reshape(3, BATCH, -1)
    ref = _run(_cfg(2, decode="sparse"), (1, 1), data)
    for cfg, mesh_shape in ((_cfg(2, decode="sparse"), (2, 4)), (_cfg(2, decode="dense"), (1, 1))):
        got = _run(cfg, mesh_shape, data)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ref), jax.tree.leaves(got)):
            np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6, err_msg=f"{cfg.decode} {mesh_shape} {path}")


def test_decoder_mass_of_per_layer_transcoders_is_all_on_the_diagonal():
    report = decoder_mass(_perturbed(_cfg(1)))
    assert report["decoder_share_beyond_overall"] == 0.0
    assert report["decoder_share_beyond_uniform_overall"] == 0.0
    assert report["effectively_per_layer_transcoders"]
    span2 = decoder_mass(_perturbed(_cfg(2)))
    # spans 2, 2, 2, 1: equal mass per block would put 3 of 7 blocks' mass beyond l' = l.
    assert span2["decoder_share_beyond_uniform_overall"] == pytest.approx(3 / 7)
    assert span2["decoder_share_beyond_uniform"] == [0.5, 0.5, 0.5, 0.0]


def test_circuit_tracer_export_pads_the_missing_blocks_with_zeros(tmp_path):
    cfg = _cfg(2, arch="jumprelu", k=None, init_threshold=0.05)
    params = jax.device_get(_perturbed(cfg))
    folder = export_clt_circuit_tracer(tmp_path / "clt", params, cfg, model_name="tiny")
    back, back_cfg = import_clt_circuit_tracer(folder)
    assert [w.shape for w in back.W_dec] == [(F, L - layer, D) for layer in range(L)]
    for layer in range(L):
        np.testing.assert_array_equal(np.asarray(back.W_dec[layer])[:, 2:], 0.0)
    x = jnp.moveaxis(split_rows(_rows(8, 4), cfg)[0], 1, 0)
    np.testing.assert_allclose(np.asarray(reconstruct(back, x, back_cfg)), np.asarray(reconstruct(params, x, cfg)),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [0, L + 1, 1.5])
def test_config_refuses_a_span_outside_one_to_n_layers(bad):
    with pytest.raises(CLTConfigError, match=f"decoder_span must be an int in \\[1, n_layers={L}\\].*{bad!r}"):
        _cfg(bad)
