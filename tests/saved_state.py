"""Reading what a run folder saved through the trainer's own resume path (`load_or_init_state`,
config from the folder's config.json), for tests that compare checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from jaxdict.run_layout import CONFIG_FILE, PARAMS
from jaxdict.train.config import RunConfig
from jaxdict.train.mesh import make_mesh
from jaxdict.train.state import load_or_init_state, to_items


def saved_state(run_dir, step=None, mesh=None):
    """`Loaded` state of checkpoint `step` (None: the latest) on `mesh` (default: one device)."""
    cfg = RunConfig.from_dict(json.loads((Path(run_dir) / CONFIG_FILE).read_text()))
    mesh = mesh or make_mesh(1, 1, devices=jax.devices()[:1])
    loaded = load_or_init_state(cfg.sae, cfg.optim, mesh, run_dir=run_dir, step=step)
    assert loaded.step is not None, f"{run_dir} holds no checkpoint"
    return loaded


def saved_params(run_dir, step=None) -> dict[str, np.ndarray]:
    """The params item of checkpoint `step` (None: the latest) as host arrays (as trained)."""
    return {k: np.asarray(v) for k, v in to_items(saved_state(run_dir, step).value)[PARAMS].items()}
