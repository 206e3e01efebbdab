"""Orbax checkpoints of a run: SAE params, the rest of the train state, the loader position and the
resolved config, saved together at one step (the layout the evaluator reads; keep it exact):

    <run_dir>/checkpoints/<step>/params     StandardSave {"W_enc","b_enc","W_dec","b_dec",
                                            ["threshold"], "input_scale"} — as trained (normalised inputs)
                                 /state      StandardSave of the other TrainState fields
                                 /data_iter  JsonSave of the loader iterator state
                                 /config     JsonSave of the resolved config (= <run_dir>/config.json)

Saves are asynchronous and atomic (Orbax writes into a temporary folder and renames it when every
item is complete), so a crash during a save leaves the previous checkpoint as the latest one.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from jaxdict.sae.params import SAEParams
from jaxdict.train.state import TrainState, to_shardings

ITEMS = ("params", "state", "data_iter", "config")
CHECKPOINT_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^\d+$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def make_manager(run_dir: str | Path, keep: int = 2, async_save: bool = True) -> ocp.CheckpointManager:
    """A CheckpointManager at `<run_dir>/checkpoints` keeping the `keep` latest steps."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=async_save,
        # Folders left by a save that crashed are removed when the next manager starts.
        cleanup_tmp_directories=True,
        create=True,
    )
    return ocp.CheckpointManager(checkpoint_dir(run_dir).absolute(), options=options, item_names=ITEMS)


def latest_step(run_dir: str | Path) -> int | None:
    """The newest finished checkpoint step, from a directory listing (no Orbax, no JAX arrays).
    Unfinished saves live in temporary folders whose names are not plain step numbers."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return None
    steps = [int(p.name) for p in folder.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return max(steps) if steps else None


def all_steps(run_dir: str | Path) -> list[int]:
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def params_item(state: TrainState) -> dict[str, jax.Array]:
    p = state.params
    item = {"W_enc": p.W_enc, "b_enc": p.b_enc, "W_dec": p.W_dec, "b_dec": p.b_dec}
    if p.threshold is not None:
        item["threshold"] = p.threshold
    item["input_scale"] = state.input_scale
    return item


def state_item(state: TrainState) -> dict[str, Any]:
    return {
        "step": state.step,
        "opt_state": state.opt_state,
        "rng": state.rng,
        "tokens_since_fired": state.tokens_since_fired,
        "hparams": state.hparams,
        "n_nonfinite": state.n_nonfinite,
        "consecutive_nonfinite": state.consecutive_nonfinite,
    }


def from_items(params: dict[str, Any], rest: dict[str, Any]) -> TrainState:
    return TrainState(
        step=rest["step"],
        params=SAEParams(W_enc=params["W_enc"], b_enc=params["b_enc"], W_dec=params["W_dec"],
                         b_dec=params["b_dec"], threshold=params.get("threshold")),
        opt_state=rest["opt_state"],
        rng=rest["rng"],
        tokens_since_fired=rest["tokens_since_fired"],
        input_scale=params["input_scale"],
        hparams=rest["hparams"],
        n_nonfinite=rest["n_nonfinite"],
        consecutive_nonfinite=rest["consecutive_nonfinite"],
    )


def save(manager: ocp.CheckpointManager, step: int, state: TrainState, data_iter: dict, config: dict,
         force: bool = True) -> bool:
    """Start an (asynchronous) save of everything at `step`. The device arrays are copied before
    this returns, so the caller may donate `state` to the next step right away."""
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(params_item(state)),
        state=ocp.args.StandardSave(state_item(state)),
        data_iter=ocp.args.JsonSave(data_iter),
        config=ocp.args.JsonSave(config),
    )
    return manager.save(step, args=args, force=force)


def _abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def restore(
    manager: ocp.CheckpointManager,
    step: int,
    abstract_state: TrainState,
    shardings: TrainState,
) -> tuple[TrainState, dict, dict]:
    """(state, data_iter_state, config) at `step`, each array placed with `shardings` — built from
    `state_specs` on whatever mesh is current, so a checkpoint restores onto any device count."""
    target = _abstract_with_shardings(abstract_state, shardings)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardRestore(params_item(target)),
            state=ocp.args.StandardRestore(state_item(target)),
            data_iter=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),
        ),
    )
    return from_items(restored.params, restored.state), restored.data_iter, restored.config


def restore_onto_mesh(
    run_dir: str | Path,
    mesh: Mesh,
    abstract_state: TrainState,
    specs: TrainState,
    step: int | None = None,
) -> tuple[TrainState, dict, dict]:
    """Restore `<run_dir>` (latest step unless given) with shardings `specs` on `mesh`."""
    step = latest_step(run_dir) if step is None else step
    if step is None:
        raise FileNotFoundError(f"{run_dir} holds no finished checkpoint under {CHECKPOINT_DIR}/")
    manager = make_manager(run_dir, async_save=False)
    try:
        return restore(manager, step, abstract_state, to_shardings(mesh, specs))
    finally:
        manager.close()


def load_params(run_dir: str | Path, step: int | None = None) -> dict[str, Any]:
    """The `params` item of a checkpoint as host numpy arrays, whatever mesh or process count
    wrote it (no target shardings, no optax): {"W_enc","b_enc","W_dec","b_dec",["threshold"],
    "input_scale"}, as trained on normalised inputs."""
    import numpy as np

    step = latest_step(run_dir) if step is None else step
    if step is None:
        raise FileNotFoundError(f"{run_dir} holds no finished checkpoint under {CHECKPOINT_DIR}/")
    path = (checkpoint_dir(run_dir) / str(step) / "params").absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"{run_dir}: checkpoint step {step} has no params item ({path})")
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    numpy_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=numpy_args))
