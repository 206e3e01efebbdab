"""A trained CLT run folder read back for evaluation and export: the params item of a checkpoint
(only that item; jaxdict.run_layout.restore_items checks every array's shape against the config
first), with the per-hook scales folded, so the parameters act on raw activations:

    run = load_clt_run("runs/clt")                 # latest step
    y_hat = forward(run.params, x_raw, run.cfg).y_hat   # raw mlp_out units

Folding (the CLT trained on x_l·s_in[l] and y_l'·s_out[l']): W_enc[l]·s_in[l]; W_dec[l][:, m] and
b_dec[l'] divided by s_out of their output layer; b_enc and thresholds act on pre-activations,
which folding leaves unchanged.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from jaxdict import run_layout as layout
from jaxdict.clt.config import CLTConfig
from jaxdict.clt.params import CLTParams, init_params


class CLTRunError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class CLTRun:
    params: CLTParams  # raw units (float32 numpy)
    cfg: CLTConfig
    step: int
    input_scale: np.ndarray  # [2, L] the folded-in scales (s_in, s_out)
    model: str
    config: dict  # the run's resolved config


def fold_scales(params: CLTParams, s_in, s_out) -> CLTParams:
    """Parameters trained on scaled rows -> the same map on raw rows (float64 numpy)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), jax.device_get(params))
    s_in, s_out = np.asarray(s_in, np.float64), np.asarray(s_out, np.float64)
    return CLTParams(W_enc=p.W_enc * s_in[:, None, None], b_enc=p.b_enc,
                     W_dec=tuple(block / s_out[layer:layer + block.shape[1]][None, :, None]
                                 for layer, block in enumerate(p.W_dec)),
                     b_dec=p.b_dec / s_out[:, None], threshold=p.threshold)


def read_clt_run_config(run_dir: str | Path) -> dict:
    path = Path(run_dir) / layout.CONFIG_FILE
    if not path.is_file():
        raise CLTRunError(f"{run_dir} is not a run folder: no {layout.CONFIG_FILE}")
    config = json.loads(path.read_text())
    if not isinstance(config.get("clt"), dict):
        raise CLTRunError(f"{path} has no 'clt' section: {run_dir} is not a CLT run (an SAE run loads with "
                          "jaxdict.sae.io.load_sae)")
    return config


def load_clt_run(run_dir: str | Path, step: int | None = None) -> CLTRun:
    """The params item of checkpoint `step` (None: the latest) of a CLT run, in raw units."""
    from jaxdict.clt.train_state import clt_params_from_item, clt_params_item
    from jaxdict.train.config import RunConfig

    run_dir = Path(run_dir).expanduser().resolve()
    config = read_clt_run_config(run_dir)
    cfg = RunConfig.from_dict(config).clt
    steps = layout.all_steps(run_dir)
    if not steps:
        raise CLTRunError(f"{layout.checkpoint_dir(run_dir)} holds no saved step yet")
    if step is not None and step not in steps:
        raise CLTRunError(f"step {step} was never saved in {run_dir}; saved steps: {steps}")
    step = steps[-1] if step is None else step
    abstract = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = clt_params_item(
        jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract),
        jax.ShapeDtypeStruct((2, cfg.n_layers), np.float32, sharding=device))
    item = layout.restore_items(run_dir, step, {layout.PARAMS: target})[layout.PARAMS]
    params, scale = clt_params_from_item(item)
    scale = np.asarray(scale, np.float64)
    raw = fold_scales(params, scale[0], scale[1])
    raw = jax.tree.map(lambda a: np.asarray(a, np.float32), raw)
    return CLTRun(params=raw, cfg=cfg, step=step, input_scale=scale,
                  model=str((config.get("data") or {}).get("model", "")), config=config)
