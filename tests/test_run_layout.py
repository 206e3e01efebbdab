"""Format versions on disk: what this jaxdict writes, and newer versions refused by name (run
folders, checkpoints, exports) rather than misread."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdict import run_layout
from jaxdict.sae.config import SAEConfig
from jaxdict.sae.inference import SAE
from jaxdict.sae.io import SAELoadError, export_saelens, load_sae
from jaxdict.sae.params import init_params
from jaxdict.train.run_setup import prepare_run_dir
from test_sae_io import write_run

CFG = SAEConfig(arch="jumprelu", d_in=16, n_features=32)


def _run(tmp_path):
    return write_run(tmp_path / "run", CFG, init_params(CFG, jax.random.PRNGKey(0)), 0.5, steps=(3,))


def test_checkpoint_and_export_carry_the_version(tmp_path):
    run = _run(tmp_path)
    assert run_layout.checkpoint_format_version(run, 3) == run_layout.FORMAT_VERSION
    folder = export_saelens(load_sae(run), tmp_path / "exp")
    assert json.loads((folder / "cfg.json").read_text())["jaxdict"]["format_version"] == run_layout.FORMAT_VERSION


def test_newer_checkpoint_is_refused_by_name(tmp_path):
    run = _run(tmp_path)
    item = run / "checkpoints" / "3" / "format" / "metadata"
    doc = json.loads(item.read_text())
    item.write_text(json.dumps({**doc, "format_version": 99}))
    with pytest.raises(SAELoadError, match="format version 99, newer than this jaxdict reads"):
        load_sae(run)


def test_newer_export_is_refused_by_name(tmp_path):
    sae = SAE(cfg=CFG, params=init_params(CFG, jax.random.PRNGKey(0)), model="m", hook="h")
    folder = export_saelens(sae, tmp_path / "exp")
    doc = json.loads((folder / "cfg.json").read_text())
    doc["jaxdict"]["format_version"] = 3
    (folder / "cfg.json").write_text(json.dumps(doc))
    with pytest.raises(SAELoadError, match="format version 3"):
        load_sae(folder)


def test_newer_run_folder_is_refused_by_name(tmp_path):
    resolved = {"sae": {"d_in": 16}}
    assert prepare_run_dir(tmp_path / "r", resolved, force=False, write=True) is False
    assert run_layout.run_format_version(tmp_path / "r") == run_layout.FORMAT_VERSION
    (tmp_path / "r" / run_layout.RUN_FORMAT_FILE).write_text(json.dumps({"format": "jaxdict.run", "format_version": 7}))
    with pytest.raises(run_layout.CheckpointError, match="format version 7"):
        prepare_run_dir(tmp_path / "r", resolved, force=False, write=True)


def test_params_that_do_not_fit_the_config_are_refused_by_name(tmp_path):
    run = _run(tmp_path)
    doc = json.loads((run / "config.json").read_text())
    doc["sae"]["n_features"] = 64
    (run / "config.json").write_text(json.dumps(doc))
    with pytest.raises(SAELoadError, match=r"W_dec has shape \(32, 16\) in the checkpoint, but the config gives \(64, 16\)"):
        load_sae(run)


def test_load_or_init_initialises_without_a_checkpoint(tmp_path):
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    loaded = run_layout.load_or_init(lambda k: {"w": jax.random.normal(k, (3,))}, jax.random.PRNGKey(1),
                                     shardings=lambda a: jax.tree.map(lambda _: device, a), run_dir=tmp_path)
    assert loaded.step is None and loaded.json == {}
    np.testing.assert_array_equal(np.asarray(loaded.value["w"]), np.asarray(jax.random.normal(jax.random.PRNGKey(1), (3,))))
    with pytest.raises(run_layout.CheckpointError, match="holds no finished checkpoint"):
        run_layout.load_or_init(lambda: {"w": jnp.zeros(3)}, shardings=lambda a: jax.tree.map(lambda _: device, a),
                                run_dir=tmp_path, init_if_missing=False)
