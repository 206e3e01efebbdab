"""A trained CLT run read back three ways on real held-out rows, which must agree: the checkpoint as
trained (rows scaled per hook, outputs unscaled), `load_clt_run` (scales folded, raw rows), and —
when circuit-tracer is installed — circuit-tracer's own CrossLayerTranscoder loading our export.

    python experiments/clt_run_check.py RUN_DIR EXPORT_DIR [--rows 512]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxdict.clt.forward import forward
from jaxdict.clt.run import load_clt_run
from jaxdict.clt.step import split_rows
from jaxdict.clt.train_state import load_or_init_clt_state
from jaxdict.data.multi import MultiStoreSource, clt_store_paths
from jaxdict.train.config import RunConfig
from jaxdict.train.mesh import make_mesh


def circuit_tracer_forward(folder: Path, x: np.ndarray):
    """circuit-tracer's encode/decode of x [n, L, d] from our export folder (its cache route)."""
    import huggingface_hub.constants as hub_constants
    import torch

    if not hasattr(hub_constants, "HF_HUB_ENABLE_HF_TRANSFER"):  # as tests/test_circuit_tracer.py
        hub_constants.HF_HUB_ENABLE_HF_TRANSFER = False
    from circuit_tracer.utils.caching import load_transcoders_from_cache

    clt, _ = load_transcoders_from_cache(folder.name, cache_dir=folder.parent, device=torch.device("cpu"),
                                         dtype=torch.float32, lazy_decoder=False)
    with torch.no_grad():
        acts = clt.encode(torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2))))
        y = clt.decode(acts)
    return acts.numpy().transpose(1, 0, 2), y.numpy().transpose(1, 0, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("export")
    ap.add_argument("--rows", type=int, default=512)
    args = ap.parse_args()
    run = load_clt_run(args.run)
    cfg = RunConfig.from_dict(run.config)
    source = MultiStoreSource(clt_store_paths(cfg.data.store, cfg.clt.n_layers), split="eval",
                              eval_fraction=cfg.data.eval_fraction, check=False)
    rows = np.asarray(source.read(0, min(args.rows, source.n_rows)), np.float32)
    x, y = (np.asarray(a) for a in split_rows(jnp.asarray(rows), cfg.clt))
    raw = forward(run.params, jnp.asarray(x), cfg.clt, train=False)
    state = load_or_init_clt_state(cfg.clt, cfg.optim, make_mesh(1, 1, devices=jax.devices()[:1]),
                                   run_dir=args.run).value
    s = np.asarray(state.input_scale)
    trained = forward(jax.device_get(state.params), jnp.asarray(x * s[0][None, :, None]), cfg.clt, train=False)
    y_trained = np.asarray(trained.y_hat) / s[1][None, :, None]
    y_raw = np.asarray(raw.y_hat)
    fvu = np.sum((y - y_raw) ** 2, axis=(0, 2)) / np.sum((y - y.mean(0)) ** 2, axis=(0, 2))
    report = {"rows": len(rows), "step": run.step, "fvu_mean": float(fvu.mean()),
              "fvu_per_layer": [round(float(v), 4) for v in fvu],
              "raw_vs_trained_max_rel": float(np.max(np.abs(y_raw - y_trained)) / np.max(np.abs(y_trained))),
              # float32 sums of raw residual rows (large outlier dimensions) round differently from
              # sums of scaled rows; a pre-activation within that rounding of θ can switch sides
              "preact_max_abs_diff": float(np.max(np.abs(np.asarray(raw.pre_acts) - np.asarray(trained.pre_acts)))),
              "active_flips": int(np.sum((np.asarray(raw.latents) > 0) != (np.asarray(trained.latents) > 0))),
              "active_entries": int(np.sum(np.asarray(trained.latents) > 0))}
    try:
        acts, y_ct = circuit_tracer_forward(Path(args.export).resolve(), x)
        report["circuit_tracer_y_max_rel"] = float(np.max(np.abs(y_ct - y_raw)) / np.max(np.abs(y_raw)))
        report["circuit_tracer_vs_trained_y_max_rel"] = float(np.max(np.abs(y_ct - y_trained)) / np.max(np.abs(y_trained)))
        report["circuit_tracer_active_flips_vs_raw"] = int(np.sum((acts > 0) != (np.asarray(raw.latents) > 0)))
    except ImportError as e:
        report["circuit_tracer"] = f"not installed ({e})"
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
