"""Matryoshka SAEs (sae.matryoshka_prefixes): the nested prefix loss against a hand-written
reference, sharded and sweep-stacked steps against one device, config validation and old configs."""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdict.sae.config import ConfigError, SAEConfig
from jaxdict.sae.losses import sae_loss
from jaxdict.sae.params import init_params
from test_sae_step import (BATCH, D_IN, N_FEATURES, assert_sweep_equals_separate_runs, batches,
                            run_steps)

# Boundaries that do not line up with the feature shards of a 4- or 8-way model axis (16 or 8
# features each): block [6, 20) spans shards, and shard 0 meets two blocks.
PREFIXES = (6, 20, N_FEATURES)
CONFIGS = {
    "topk_sparse": SAEConfig(arch="topk", d_in=D_IN, n_features=N_FEATURES, k=4, dead_tokens=1, decode="sparse",
                             matryoshka_prefixes=PREFIXES),
    "topk_dense": SAEConfig(arch="topk", d_in=D_IN, n_features=N_FEATURES, k=4, dead_tokens=1, decode="dense",
                            matryoshka_prefixes=PREFIXES),
    "batchtopk": SAEConfig(arch="batchtopk", d_in=D_IN, n_features=N_FEATURES, k=4, dead_tokens=1,
                           matryoshka_prefixes=PREFIXES),
}


def reference_loss(params, x, cfg: SAEConfig) -> jax.Array:
    """The paper's loss written out densely: one selection over all F latents, truncated per prefix,
    mean over prefixes of the mean squared error (no AuxK: nothing is dead here)."""
    z = (x - params.b_dec) @ params.W_enc + params.b_enc
    zs = jax.lax.stop_gradient(z)
    if cfg.arch == "topk":
        kth = jnp.sort(zs, axis=-1)[:, -cfg.k][:, None]
        keep = (zs >= kth) & (zs > 0)
    else:
        cutoff = jnp.sort(zs.reshape(-1))[-x.shape[0] * cfg.k]
        keep = (zs >= cutoff) & (zs > 0)
    f = jnp.where(keep, z, 0.0)
    losses = [jnp.mean(jnp.sum(jnp.square(x - (f[:, :m] @ params.W_dec[:m] + params.b_dec)), axis=-1))
              for m in cfg.matryoshka_prefixes]
    return jnp.mean(jnp.stack(losses))


def random_params(cfg: SAEConfig, seed: int = 0):
    p = init_params(cfg, jax.random.PRNGKey(seed))
    rng = np.random.default_rng(seed)
    return p.replace(b_enc=jnp.asarray(rng.normal(size=cfg.n_features) * 0.1, jnp.float32),
                     b_dec=jnp.asarray(rng.normal(size=cfg.d_in) * 0.1, jnp.float32))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_loss_and_gradient_equal_the_reference(name):
    cfg = CONFIGS[name]
    params = random_params(cfg)
    x = jnp.asarray(batches(1, seed=2)[0])
    dead = jnp.zeros((N_FEATURES,), bool)

    def ours(p):
        return sae_loss(p, x, cfg, None, sparsity_coeff=jnp.float32(0.0), dead=dead)

    (loss, (out, parts)), grads = jax.jit(jax.value_and_grad(ours, has_aux=True))(params)
    ref_loss, ref_grads = jax.value_and_grad(reference_loss)(params, x, cfg)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(parts["matryoshka_loss"], ref_loss, rtol=1e-5)
    for field in ("W_enc", "b_enc", "W_dec", "b_dec"):
        np.testing.assert_allclose(getattr(grads, field), getattr(ref_grads, field), rtol=1e-4, atol=1e-5,
                                   err_msg=field)
    # The prefix losses differ from each other (the test would not see a prefix ignored otherwise)
    # and `mse` is the full reconstruction's.
    prefix_losses = [float(parts[f"mse_prefix_{m}"]) for m in PREFIXES[:-1]] + [float(parts["mse"])]
    assert len(set(np.round(prefix_losses, 4))) == len(PREFIXES)
    np.testing.assert_allclose(np.mean(prefix_losses), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(out.prefix_x_hat[-1], out.x_hat)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_one_prefix_is_the_plain_sae(arch):
    """prefixes = (F,) is the plain loss exactly: nothing else in the step changes."""
    plain = SAEConfig(arch=arch, d_in=D_IN, n_features=N_FEATURES, k=4, decode="dense")
    nested = dataclasses.replace(plain, matryoshka_prefixes=(N_FEATURES,))
    params = random_params(plain, seed=1)
    x = jnp.asarray(batches(1, seed=3)[0])
    dead = jnp.zeros((N_FEATURES,), bool)
    a, _ = sae_loss(params, x, plain, None, sparsity_coeff=jnp.float32(0.0), dead=dead)
    b, _ = sae_loss(params, x, nested, None, sparsity_coeff=jnp.float32(0.0), dead=dead)
    np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sharded_steps_equal_single_device(name, devices):
    """Two optimiser steps, AuxK active in the second (dead_tokens=1), on a 2×4 mesh (and 1×8 for
    the sparse TopK path) equal one device. aux_capacity = F: every dead latent has a slot on every
    mesh (a `model` shard with more dead than its slots rotates its own window; tests/test_auxk.py)."""
    cfg = dataclasses.replace(CONFIGS[name], aux_capacity=N_FEATURES)
    data = batches(2, seed=4)
    ref_state, ref_metrics = run_steps(cfg, (1, 1), data)
    assert ref_metrics[-1]["aux_loss"] > 0
    assert ref_metrics[-1]["mse_prefix_6"] != ref_metrics[-1]["mse"]
    for mesh_shape in [(2, 4), (1, 8)] if name == "topk_sparse" else [(2, 4)]:
        state, metrics = run_steps(cfg, mesh_shape, data)
        for ref_leaf, leaf in zip(jax.tree.leaves(ref_state.params), jax.tree.leaves(state.params)):
            np.testing.assert_allclose(leaf, ref_leaf, rtol=2e-5, atol=2e-6, err_msg=f"{name} {mesh_shape}")
        for key in ("loss", "mse", "mse_prefix_6", "mse_prefix_20", "l0", "aux_loss"):
            np.testing.assert_allclose(metrics[-1][key], ref_metrics[-1][key], rtol=2e-5, atol=2e-6,
                                       err_msg=f"{name} {mesh_shape} {key}")


def test_sweep_axis_equals_separate_runs(devices):
    assert_sweep_equals_separate_runs(CONFIGS["batchtopk"], batches(2, seed=9))


@pytest.mark.parametrize("fields, words", [
    ({"matryoshka_prefixes": (8, 8, 64)}, ["8 follows 8", "strictly increasing"]),
    ({"matryoshka_prefixes": (32, 16, 64)}, ["16 follows 32"]),
    ({"matryoshka_prefixes": (8, 32)}, ["last prefix is 32", "n_features = 64"]),
    ({"matryoshka_prefixes": (0, 64)}, ["0 is not a positive integer"]),
    ({"matryoshka_prefixes": ()}, ["is empty"]),
    ({"matryoshka_prefixes": (8, 64), "arch": "jumprelu"}, ["arch 'jumprelu'", "topk or batchtopk"]),
    ({"matryoshka_prefixes": (8, 64), "arch": "batchtopk", "decode": "sparse"}, ["decode = 'sparse'", "auto"]),
])
def test_bad_prefixes_are_named(fields, words):
    base = {"arch": "topk", "d_in": D_IN, "n_features": N_FEATURES, "k": 4}
    with pytest.raises(ConfigError) as e:
        SAEConfig(**{**base, **fields})
    for word in words:
        assert word in str(e.value)


def test_prefixes_from_json_and_old_configs():
    """A config.json list becomes a (hashable) tuple; a config written before the field loads as
    plain (None); `--set` parses a comma list; BatchTopK with prefixes decodes densely under auto."""
    from jaxdict.config import apply_overrides
    from jaxdict.sae.io import sae_config_from_dict
    from jaxdict.train.config import RunConfig

    cfg = sae_config_from_dict({"arch": "batchtopk", "d_in": 8, "n_features": 64, "k": 4,
                                "matryoshka_prefixes": [16, 64]}, "cfg.json")
    assert cfg.matryoshka_prefixes == (16, 64) and hash(cfg)
    assert not cfg.uses_sparse_decode
    old = dataclasses.asdict(SAEConfig(arch="topk", d_in=8, n_features=64, k=4))
    del old["matryoshka_prefixes"]
    assert sae_config_from_dict(json.loads(json.dumps(old)), "old config.json").matryoshka_prefixes is None
    run = apply_overrides(RunConfig(), ["sae.arch=batchtopk", "sae.n_features=4096",
                                        "sae.matryoshka_prefixes=512,1024,4096"])
    assert run.sae.matryoshka_prefixes == (512, 1024, 4096)
    assert RunConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(run)))) == run


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_eval_reports_each_prefix_as_an_sae(arch):
    """`jaxdict eval` / held-out sums: fvu_prefix_<m> and l0_prefix_<m> are those of the inference
    code truncated to the latents below m (BatchTopK: its JumpReLU threshold)."""
    from jaxdict.evaluate.metrics import evaluate_activations
    from jaxdict.sae.inference import SAE

    cfg = dataclasses.replace(CONFIGS["topk_dense" if arch == "topk" else "batchtopk"], dead_tokens=10)
    params = random_params(cfg, seed=5)
    if arch == "batchtopk":
        params = params.replace(threshold=jnp.full((N_FEATURES,), 0.3, jnp.float32))
    sae = SAE(cfg=cfg, params=params, model=None, hook=None)
    x = batches(2, seed=6).reshape(-1, D_IN)
    result = evaluate_activations(sae, [x[:BATCH], x[BATCH:]]).result()
    f = np.asarray(sae.encode(x), np.float64)
    W_dec, b_dec = np.asarray(params.W_dec, np.float64), np.asarray(params.b_dec, np.float64)
    total = np.sum(np.square(x - x.mean(axis=0)))
    for m in PREFIXES[:-1]:
        x_hat = f[:, :m] @ W_dec[:m] + b_dec
        np.testing.assert_allclose(result[f"fvu_prefix_{m}"], np.sum(np.square(x - x_hat)) / total, rtol=1e-4)
        np.testing.assert_allclose(result[f"l0_prefix_{m}"], np.mean(np.sum(f[:, :m] > 0, axis=1)), rtol=1e-6)
    assert result["l0_prefix_6"] < result["l0_prefix_20"] < result["l0"]
    full = f @ W_dec + b_dec
    np.testing.assert_allclose(result["fvu"], np.sum(np.square(x - full)) / total, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("arch, lens_class", [("topk", "TopKSAE"), ("batchtopk", "JumpReLUSAE")])
def test_export_loads_in_saelens_and_round_trips(arch, lens_class, tmp_path):
    """A Matryoshka SAE exports as its inference architecture (SAELens saves its own Matryoshka
    BatchTopK as a JumpReLU), the prefixes in metadata.matryoshka_widths; SAELens encodes and decodes
    as we do, and our loader gets the prefixes back."""
    sae_lens = pytest.importorskip("sae_lens")
    import torch

    from jaxdict.sae.inference import SAE
    from jaxdict.sae.io import export_saelens, load_sae

    cfg = dataclasses.replace(CONFIGS["topk_sparse" if arch == "topk" else "batchtopk"], dead_tokens=10)
    params = random_params(cfg, seed=7)
    if arch == "batchtopk":
        params = params.replace(threshold=jnp.full((N_FEATURES,), 0.3, jnp.float32))
    sae = SAE(cfg=cfg, params=params, model="gemma3-270m", hook="resid_post.9")
    folder = export_saelens(sae, tmp_path / arch)
    lens = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
    assert type(lens).__name__ == lens_class
    # Our cfg.json carries no sae_lens_version, so SAELens reads it as a pre-6.0 file and keeps only
    # the LLM fields of the metadata; the widths stay in the file for readers and for our loader.
    assert json.loads((folder / "cfg.json").read_text())["metadata"]["matryoshka_widths"] == list(PREFIXES)
    x = batches(1, seed=8)[0]
    f = np.array(sae.encode(x))
    assert (f[:, :6] > 0).any() and (f[:, 20:] > 0).any()
    np.testing.assert_allclose(lens.encode(torch.from_numpy(x)).detach().numpy(), f, atol=1e-5)
    np.testing.assert_allclose(lens.decode(torch.from_numpy(f)).detach().numpy(), np.asarray(sae.decode(f)),
                               atol=1e-5)
    back = load_sae(folder)
    assert back.cfg == cfg
