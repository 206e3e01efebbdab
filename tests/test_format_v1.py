"""Run folders, checkpoints and exports written by jaxdict at 8b5cbc2 (format version 1, before
formats had a version; tests/data/format_v1/make_fixtures.py) still load bitwise, and the
interrupted run still resumes. Never regenerate these fixtures: they stand for old files users hold."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxdict.sae.io import load_sae
from jaxdict.train.config import RunConfig
from jaxdict.train.driver import train
from jaxdict.train.metrics_log import read_metrics
from jaxdict.train.run_setup import open_sources

V1 = Path(__file__).parent / "data" / "format_v1"
RUN_STEPS = [("jumprelu", 4), ("jumprelu", 8), ("topk", 8)]


def expected(name: str) -> dict[str, np.ndarray]:
    with np.load(V1 / "expected" / f"{name}.npz") as z:
        return dict(z)


def copy_of(name: str, tmp_path: Path) -> Path:
    """A writable copy (Orbax may tidy a checkpoint folder it opens; the fixtures stay untouched)."""
    return Path(shutil.copytree(V1 / name, tmp_path / name))


def assert_params_equal(params, want: dict[str, np.ndarray], where: str) -> None:
    got = {k: np.asarray(v) for k, v in vars(params).items() if v is not None}
    assert sorted(got) == sorted(want), where
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, (where, k)
        np.testing.assert_array_equal(got[k], v, err_msg=f"{where}: {k}")


@pytest.mark.parametrize("arch,step", RUN_STEPS)
def test_v1_run_loads_bitwise(tmp_path, arch, step):
    run = copy_of(f"run_{arch}", tmp_path)
    sae = load_sae(run, step=step)
    assert sae.step == step and sae.cfg.arch == arch and (sae.d_in, sae.n_features) == (16, 64)
    assert (sae.model, sae.hook) == ("planted", "planted.0")
    assert_params_equal(sae.params, expected(f"run_{arch}_sae_{step}"), f"run_{arch} step {step}")
    if step == 8:  # the latest
        assert_params_equal(load_sae(run).params, expected(f"run_{arch}_sae_8"), f"run_{arch} latest")


@pytest.mark.parametrize("kind", ["export", "saelens"])
@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_v1_export_loads_bitwise(tmp_path, kind, arch):
    sae = load_sae(copy_of(f"{kind}_{arch}", tmp_path))
    assert sae.cfg.arch == arch and sae.cfg.n_features == 64
    if arch == "topk":
        assert sae.cfg.k == 4
    if kind == "export":  # our section: the model and hook names and the step survive
        assert (sae.model, sae.hook, sae.step) == ("planted", "planted.0", 8)
    assert_params_equal(sae.params, expected(f"run_{arch}_sae_8"), f"{kind}_{arch}")


def test_v1_interrupted_run_resumes(tmp_path, capsys):
    """Step 8 and the result removed, the v1 run resumes from its step-4 checkpoint (state item
    with the old `rng` leaf, loader position) and finishes."""
    run = copy_of("run_jumprelu", tmp_path)
    store = copy_of("store", tmp_path)
    shutil.rmtree(run / "checkpoints" / "8")
    (run / "result.json").unlink()
    cfg = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
    # config.json names the store where it was made; the copy here holds the same rows
    sources = open_sources(RunConfig.from_dict({**cfg.to_dict(), "data": {**cfg.to_dict()["data"],
                                                                         "store": str(store)}}))
    result = train(cfg, str(run), sources=sources, log=print)
    assert "from step 4" in capsys.readouterr().out
    assert result.finished and result.step == 8 and np.isfinite(result.eval["fvu"])
    assert [r["step"] for r in read_metrics(run, "train")] == [4, 8]
    sae = load_sae(run)
    assert sae.step == 8 and all(np.isfinite(np.asarray(v)).all() for v in vars(sae.params).values()
                                 if v is not None)


@pytest.mark.parametrize("arch,step", [("jumprelu", 4), ("topk", 8)])
def test_v1_train_state_restores_bitwise(tmp_path, arch, step):
    """Every leaf of the train state (Adam moments and counters too) through the resume path, onto
    the mesh that wrote it and onto one device; version 1's unused `rng` leaf is read and dropped."""
    import jax

    from jaxdict.train.mesh import make_mesh
    from saved_state import saved_state

    run = copy_of(f"run_{arch}", tmp_path)
    want = expected(f"run_{arch}_state_{step}")
    assert ".rng" in want
    for mesh in (make_mesh(2, 4), None):
        loaded = saved_state(run, step, mesh=mesh)
        got = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(loaded.value)[0]}
        assert sorted(got) == sorted(k for k in want if k != ".rng")
        for k, v in got.items():
            assert v.dtype == want[k].dtype, k
            np.testing.assert_array_equal(v, want[k], err_msg=k)
        assert loaded.json["data_iter"] == json.loads((V1 / "expected" / f"run_{arch}_data_iter_{step}.json").read_text())
        assert loaded.json["config"]["run"]["name"] == f"v1-{arch}"


def test_load_sae_prints_nothing(tmp_path, capfd, caplog):
    """Loading reads only the params item: no absl warnings about the items it leaves alone."""
    import logging

    run = copy_of("run_jumprelu", tmp_path)
    capfd.readouterr()
    with caplog.at_level(logging.WARNING):
        load_sae(run)
        load_sae(copy_of("export_jumprelu", tmp_path))
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert [r.getMessage() for r in caplog.records] == []
