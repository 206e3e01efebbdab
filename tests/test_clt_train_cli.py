"""`jaxdict train --config experiments/clt.py:tiny --set clt.…` on CLT stores: trains, resumes a
finished run without training again, names a store/config mismatch; `jaxdict export RUN --format
circuit-tracer` writes the run in circuit-tracer's CLT layout, in raw units."""
from __future__ import annotations

import numpy as np
import pytest

from jaxdict.cli import main
from jaxdict.clt.circuit_tracer_io import import_clt_circuit_tracer
from jaxdict.clt.run import load_clt_run
from test_clt_train import D, F, write_clt_stores

TINY = "experiments/clt.py:tiny"


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    return write_clt_stores(tmp_path_factory.mktemp("clt_stores"))


def args(root, out, *extra):
    return ["train", "--config", TINY, "--out", str(out), "--no-progress", "--set", f"data.store={root}",
            "--set", "data.source=store", "--set", f"clt.d_model={D}", "--set", f"clt.n_features={F}",
            "--set", "optim.total_steps=10", "--set", "mesh.data=2", "--set", "mesh.model=4",
            "--set", "run.checkpoint_every=5", *extra]


def test_train_resume_mismatch_and_export(store_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(args(store_root, run)) == 0
    assert "finished at step 10" in capsys.readouterr().out
    assert main(args(store_root, run)) == 0  # already finished: nothing to train, result kept
    assert "finished at step 10" in capsys.readouterr().out
    assert main(args(store_root, tmp_path / "bad", "--set", "clt.d_model=4")) == 1
    err = capsys.readouterr().err
    assert "clt.d_model = 4" in err and "width 8" in err
    assert main(args(store_root, run, "--set", "clt.n_features=32")) == 1
    assert "clt.n_features: 16 -> 32" in capsys.readouterr().err

    out = tmp_path / "ct"
    assert main(["export", str(run), "--format", "circuit-tracer", "--out", str(out)]) == 0
    assert "cross-layer transcoder" in capsys.readouterr().out
    exported, cfg = import_clt_circuit_tracer(out)
    loaded = load_clt_run(run)
    assert (cfg.n_layers, cfg.n_features) == (loaded.cfg.n_layers, loaded.cfg.n_features)
    for name in ("W_enc", "b_enc", "b_dec", "threshold"):
        np.testing.assert_allclose(getattr(exported, name), getattr(loaded.params, name), rtol=1e-6, err_msg=name)
    for a, b in zip(exported.W_dec, loaded.params.W_dec, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert 'model_name: "google/gemma-3-270m"' in (out / "config.yaml").read_text()
