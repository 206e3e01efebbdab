"""`jaxdict export`: a run exported to SAELens and a Gemma Scope npz imported, through the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

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

    assert main(["export", str(run), "--import", str(npz), "--out", str(tmp_path / "x")]) == 1
    assert main(["export", str(run), "--step", "4", "--out", str(tmp_path / "x")]) == 1
    assert "step 4 was never saved" in capsys.readouterr().err


@pytest.mark.slow
def test_export_loads_in_saelens(tmp_path):
    """Where SAELens is installed (not a dependency), it loads our export and agrees on encode/decode."""
    sae_lens = pytest.importorskip("sae_lens")
    import jax
    import jax.numpy as jnp
    import torch

    from jaxdict.sae.inference import SAE
    from jaxdict.sae.io import export_saelens
    from jaxdict.sae.params import init_params

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16)).astype(np.float32)
    for arch, lens_class in [("relu_l1", "StandardSAE"), ("topk", "TopKSAE"), ("jumprelu", "JumpReLUSAE"),
                             ("batchtopk", "JumpReLUSAE")]:
        cfg = SAEConfig(arch=arch, d_in=16, n_features=40, k=5)
        p = init_params(cfg, jax.random.PRNGKey(0))
        p = p.replace(b_enc=jnp.asarray(rng.normal(size=40) * 0.1, jnp.float32),
                      b_dec=jnp.asarray(rng.normal(size=16), jnp.float32))
        if p.threshold is not None:
            p = p.replace(threshold=jnp.full((40,), 0.2, jnp.float32))
        sae = SAE(cfg=cfg, params=p, model="gemma3-270m", hook="resid_post.9")
        lens = sae_lens.SAE.load_from_disk(str(export_saelens(sae, tmp_path / arch)), device="cpu")
        assert type(lens).__name__ == lens_class
        assert lens.cfg.metadata.hook_name == "blocks.9.hook_resid_post"
        f = np.array(sae.encode(x))  # writable: torch.from_numpy warns on read-only arrays
        assert (f > 0).any()
        np.testing.assert_allclose(lens.encode(torch.from_numpy(x)).detach().numpy(), f, atol=1e-5)
        np.testing.assert_allclose(lens.decode(torch.from_numpy(f)).detach().numpy(), np.asarray(sae.decode(f)),
                                   atol=1e-5)
