"""`jaxdict export`: a run exported to SAELens and a Gemma Scope npz imported, through the CLI."""
from __future__ import annotations

import json

import numpy as np

from jaxdict.cli import main
from jaxdict.sae.config import SAEConfig
from jaxdict.sae.io import load_sae
from jaxdict.testing import planted_dictionary
from test_sae_io import train_params, write_run


def test_export_and_import_cli(tmp_path, capsys):
    cfg = SAEConfig(arch="jumprelu", d_in=16, n_features=32, l0_coeff=1e-3)
    x, _ = planted_dictionary(d_in=16, n_planted=24, seed=0).sample(1024, seed=1)
    params, scale = train_params(cfg, x, steps=20)
    run = write_run(tmp_path / "run", cfg, params, scale, steps=(3, 20))
    assert main(["export", str(run), "--step", "3", "--out", str(tmp_path / "exp")]) == 0
    doc = json.loads((tmp_path / "exp" / "cfg.json").read_text())
    assert doc["architecture"] == "jumprelu" and doc["jaxdict"]["step"] == 3
    a, b = load_sae(run, step=3), load_sae(tmp_path / "exp")
    np.testing.assert_allclose(np.asarray(b.encode(x[:64])), np.asarray(a.encode(x[:64])), atol=1e-5)

    npz = tmp_path / "gs" / "params.npz"
    npz.parent.mkdir()
    np.savez(npz, W_enc=np.asarray(a.params.W_enc), W_dec=np.asarray(a.params.W_dec),
             b_enc=np.asarray(a.params.b_enc), b_dec=np.asarray(a.params.b_dec),
             threshold=np.asarray(a.params.threshold))
    assert main(["export", "--import", str(npz), "--hook", "resid_post.5", "--model", "gemma3-270m",
                 "--out", str(tmp_path / "imp")]) == 0
    imp = load_sae(tmp_path / "imp")
    assert imp.hook == "resid_post.5" and imp.model == "gemma3-270m" and imp.cfg.arch == "jumprelu"
    assert "hook=resid_post.5" in capsys.readouterr().out

    assert main(["export", str(run), "--import", str(npz), "--out", str(tmp_path / "x")]) == 2
    assert main(["export", str(run), "--step", "4", "--out", str(tmp_path / "x")]) == 1
    assert "step 4 was never saved" in capsys.readouterr().err
