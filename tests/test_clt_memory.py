"""A CLT's per-device memory falls as 1/model-axis on 8 fake devices (compiled memory_analysis)."""
from __future__ import annotations

from jaxdict.clt.bench import step_memory
from jaxdict.clt.config import CLTConfig
from jaxdict.clt.params import bytes_per_device


def test_per_device_memory_falls_as_one_over_model_axis(devices):
    # Decoders dominate (L(L+1)/2 = 10 blocks of F × d): parameters 3.4 MB on one device.
    cfg = CLTConfig(n_layers=4, d_model=32, n_features=2048, arch="jumprelu")
    batch = 64
    rows = {m: step_memory(cfg, batch, (1, m)) for m in (1, 2, 4, 8)}
    batch_bytes = batch * 2 * cfg.n_layers * cfg.d_model * 4
    # The params, Adam's mu and nu (3 copies of the feature-sharded part) plus what is replicated:
    # the batch, b_dec in all three copies and Adam's count.
    replicated = batch_bytes + 3 * 4 * cfg.n_layers * cfg.d_model + 4
    for m, row in rows.items():
        sharded = 3 * (bytes_per_device(cfg, m) - 4 * cfg.n_layers * cfg.d_model)
        assert row["arguments"] == sharded + replicated, (m, row)
    ratio = rows[1]["arguments"] / rows[8]["arguments"]
    assert ratio > 7.5, ratio  # (1 - replicated share) of 8: 7.9 at this shape
    # temporaries (per-device activations of a [B, L, F/m] latents block and gradients) fall too
    assert rows[8]["temporaries"] < rows[1]["temporaries"] / 4, {m: r["temporaries"] for m, r in rows.items()}


def test_bench_clt_cli_writes_a_row(tmp_path, capsys):
    import json

    from jaxdict.cli import main

    out = tmp_path / "clt.json"
    assert main(["bench", "clt", "--clt-layers", "3", "--d-in", "8", "--clt-features", "16", "--batch-size", "16",
                 "--k", "2", "--iters", "1", "--mesh", "1x2", "--clt-archs", "topk", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["arch"] for r in rows] == ["topk-sparse"]
    assert rows[0]["tokens_per_s"] > 0 and rows[0]["mesh"] == "1x2" and rows[0]["l0_per_layer"] == 2.0
    assert "clt topk-sparse" in capsys.readouterr().out
