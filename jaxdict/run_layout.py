"""Run folders and checkpoints on disk: the one module that knows their layout and format version,
and the one way to read a checkpoint (`load_or_init`). It imports neither optax nor grain nor the
trainer, so evaluation jobs read checkpoints through it. The layout (format version 2):

    <run>/format.json               {"format": "jaxdict.run", "format_version": 2} (absent: version 1)
    <run>/config.json               the resolved config
    <run>/metrics.jsonl, result.json, tb/, profile/      (written by jaxdict.train)
    <run>/checkpoints/<step>/       one Orbax CheckpointManager step; its items, one folder each:
        params      StandardSave {"W_enc","b_enc","W_dec","b_dec",["threshold"],["W_skip"],"input_scale"} — as
                    trained (on inputs · input_scale)
        state       StandardSave of the rest of the train state (version 1 also holds "rng", unused)
        data_iter   JsonSave of the loader's position
        config      JsonSave of the resolved config
        format      JsonSave {"format": "jaxdict.checkpoint", "format_version": 2} (absent: version 1)

Saves are asynchronous and atomic (Orbax writes into a temporary folder and renames it when every
item is complete), so a crash during a save leaves the previous checkpoint as the latest one.
Readers accept every version up to FORMAT_VERSION and refuse newer ones by name.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Callable

import jax

from jaxdict.sae.params import SAEParams

# Version history (README "Formats on disk"): 1 = up to commit 8b5cbc2 (no version recorded; the
# state item holds an unused "rng"); 2 = format.json / format item / export "format_version"; no rng.
FORMAT_VERSION = 2
RUN_FORMAT_FILE = "format.json"
CONFIG_FILE = "config.json"
RESULT_FILE = "result.json"
CHECKPOINT_DIR = "checkpoints"
PARAMS, STATE, DATA_ITER, CONFIG, FORMAT = "params", "state", "data_iter", "config", "format"
ITEMS = (PARAMS, STATE, DATA_ITER, CONFIG, FORMAT)
ARRAY_ITEMS, JSON_ITEMS = (PARAMS, STATE), (DATA_ITER, CONFIG, FORMAT)
# Leaves of the state item that older versions wrote and nothing reads any more.
DROPPED_STATE_LEAVES = {1: ("rng",)}
_STEP_DIR = re.compile(r"^\d+$")


class CheckpointError(ValueError):
    """A checkpoint is missing, newer than this jaxdict, or does not fit the config."""


# -- folders and versions -----------------------------------------------------------------------
def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def all_steps(run_dir: str | Path) -> list[int]:
    """Finished checkpoint steps, from a directory listing (unfinished saves live in temporary
    folders whose names are not plain step numbers)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def latest_step(run_dir: str | Path) -> int | None:
    steps = all_steps(run_dir)
    return steps[-1] if steps else None


def format_doc(kind: str) -> dict[str, Any]:
    return {"format": f"jaxdict.{kind}", "format_version": FORMAT_VERSION}


def check_version(version: Any, where: str) -> int:
    """`version` as an int this jaxdict reads, or a CheckpointError naming `where`."""
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{where}: format_version {version!r} is not a positive integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{where} has format version {version}, newer than this jaxdict reads "
                              f"(1..{FORMAT_VERSION}); upgrade jaxdict to read it")
    return version


def write_run_format(run_dir: str | Path) -> None:
    from jaxdict.store.blobs import write_json_atomic

    write_json_atomic(str(Path(run_dir) / RUN_FORMAT_FILE), format_doc("run"))


def run_format_version(run_dir: str | Path) -> int:
    """The run folder's format version (1 for folders written before versions were recorded)."""
    path = Path(run_dir) / RUN_FORMAT_FILE
    if not path.is_file():
        return 1
    return check_version(json.loads(path.read_text()).get("format_version"), str(path))


def checkpoint_format_version(run_dir: str | Path, step: int) -> int:
    item = checkpoint_dir(run_dir) / str(step) / FORMAT
    if not item.is_dir():
        return 1
    return check_version(_json_restore(item).get("format_version"), f"{run_dir} checkpoint step {step}")


# -- writing --------------------------------------------------------------------------------------
def make_manager(run_dir: str | Path, keep: int = 2, async_save: bool = True):
    """The CheckpointManager that writes `<run_dir>/checkpoints`, keeping the `keep` latest steps."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=async_save,
        # Folders left by a save that crashed are removed when the next manager starts.
        cleanup_tmp_directories=True,
        create=True,
    )
    return ocp.CheckpointManager(checkpoint_dir(run_dir).absolute(), options=options, item_names=ITEMS)


def save(manager, step: int, params: dict[str, Any], state: dict[str, Any], data_iter: dict, config: dict,
         force: bool = True) -> bool:
    """Start an (asynchronous) save of the items at `step`, with the format item. The device
    arrays are copied before this returns, so the caller may donate them right away."""
    import orbax.checkpoint as ocp

    args = ocp.args.Composite(**{
        PARAMS: ocp.args.StandardSave(params),
        STATE: ocp.args.StandardSave(state),
        DATA_ITER: ocp.args.JsonSave(data_iter),
        CONFIG: ocp.args.JsonSave(config),
        FORMAT: ocp.args.JsonSave(format_doc("checkpoint")),
    })
    return manager.save(step, args=args, force=force)


def params_item(params: SAEParams, input_scale: Any) -> dict[str, Any]:
    """The params item of SAE params trained on inputs · input_scale (arrays or abstract leaves)."""
    item = {"W_enc": params.W_enc, "b_enc": params.b_enc, "W_dec": params.W_dec, "b_dec": params.b_dec}
    if params.threshold is not None:
        item["threshold"] = params.threshold
    if params.W_skip is not None:
        item["W_skip"] = params.W_skip
    item["input_scale"] = input_scale
    return item


def params_from_item(item: dict[str, Any]) -> tuple[SAEParams, Any]:
    """(SAEParams, input_scale) from a params item."""
    params = SAEParams(W_enc=item["W_enc"], b_enc=item["b_enc"], W_dec=item["W_dec"], b_dec=item["b_dec"],
                       threshold=item.get("threshold"), W_skip=item.get("W_skip"))
    return params, item["input_scale"]


# -- reading --------------------------------------------------------------------------------------
def _json_restore(item_dir: Path) -> Any:
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(item_dir.absolute())


def _array_metadata(item_dir: Path) -> Any:
    """Shapes and dtypes of an array item, from the handler (a Checkpointer would also look for a
    step-level metadata file inside the item folder, and log a warning that it is not there)."""
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointHandler().metadata(item_dir.absolute())


def _check_params_fit(item_dir: Path, target: dict[str, Any], where: str) -> None:
    """Refuse, naming the array, a params item whose arrays are missing or of other shapes."""
    saved = _array_metadata(item_dir)
    for name, want in target.items():
        if name not in saved:
            raise CheckpointError(f"{where}: the params item has no array {name!r} (has {sorted(saved)})")
        if tuple(saved[name].shape) != tuple(want.shape):
            raise CheckpointError(f"{where}: {name} has shape {tuple(saved[name].shape)} in the checkpoint, "
                                  f"but the config gives {tuple(want.shape)}")


def _with_dropped_leaves(item_dir: Path, target: dict[str, Any], version: int) -> dict[str, Any]:
    """The state target plus the leaves version `version` wrote and no one reads (restored, then
    dropped), placed like the scalar `step`."""
    dropped = DROPPED_STATE_LEAVES.get(version, ())
    if not dropped:
        return target
    saved = _array_metadata(item_dir)
    sharding = target["step"].sharding
    return {**target, **{k: jax.ShapeDtypeStruct(tuple(saved[k].shape), saved[k].dtype, sharding=sharding)
                         for k in dropped if k in saved}}


def restore_items(run_dir: str | Path, step: int, targets: dict[str, Any],
                  json_items: tuple[str, ...] = ()) -> dict[str, Any]:
    """The array items named in `targets` (trees of ShapeDtypeStruct with shardings: each array
    lands there, on any mesh) and the JSON items in `json_items` of checkpoint `step`; nothing else
    is read. Any format version up to FORMAT_VERSION."""
    import orbax.checkpoint as ocp

    step_dir = checkpoint_dir(run_dir) / str(step)
    where = f"{run_dir} checkpoint step {step}"
    if not step_dir.is_dir():
        raise CheckpointError(f"step {step} was never saved in {run_dir}; saved steps: {all_steps(run_dir)}")
    version = checkpoint_format_version(run_dir, step)
    out: dict[str, Any] = {}
    for name, target in targets.items():
        item_dir = step_dir / name
        if not item_dir.is_dir():
            raise CheckpointError(f"{where} has no {name!r} item ({item_dir})")
        if name == PARAMS:
            _check_params_fit(item_dir, target, where)
        if name == STATE:
            target = _with_dropped_leaves(item_dir, target, version)
        restored = ocp.Checkpointer(ocp.StandardCheckpointHandler()).restore(
            item_dir.absolute(), args=ocp.args.StandardRestore(target))
        if name == STATE:
            restored = {k: v for k, v in restored.items() if k not in DROPPED_STATE_LEAVES.get(version, ())}
        out[name] = restored
    for name in json_items:
        out[name] = _json_restore(step_dir / name)
    return out


@dataclasses.dataclass
class Loaded:
    """What `load_or_init` returns: `value` placed with `shardings`; `step` the checkpoint step
    read (None: freshly initialised); the checkpoint's JSON items asked for (else empty)."""

    value: Any
    shardings: Any
    step: int | None
    json: dict[str, Any]


def load_or_init(
    init_fn: Callable[..., Any],
    *args: Any,
    shardings: Callable[[Any], Any],
    run_dir: str | Path | None = None,
    step: int | None = None,
    to_items: Callable[[Any], dict[str, Any]] = lambda tree: {PARAMS: tree},
    from_items: Callable[[dict[str, Any]], Any] = lambda items: items[PARAMS],
    json_items: tuple[str, ...] = (),
    init_if_missing: bool = True,
) -> Loaded:
    """Shapes, then shardings, then arrays (as levanter's load_checkpoint_or_initialize does):

    1. `abstract = jax.eval_shape(init_fn, *args)` — no arrays yet;
    2. `shardings(abstract)` — a NamedSharding (or any Sharding) per leaf;
    3. the checkpoint `step` of `run_dir` (None: its latest) restored straight into those
       shardings through `to_items` / `from_items` (the tree <-> checkpoint items mapping), or,
       when there is none and `init_if_missing`, `jax.jit(init_fn, out_shardings=...)(*args)`.

    One path for a fresh start, a resume, the tests and the evaluator, so each starts from the
    same initial state and reads the same items."""
    abstract = jax.eval_shape(init_fn, *args)
    placed = shardings(abstract)
    if run_dir is not None and step is None:
        step = latest_step(run_dir)
    if step is None:
        if not init_if_missing:
            raise CheckpointError(f"{run_dir} holds no finished checkpoint under {CHECKPOINT_DIR}/")
        return Loaded(jax.jit(init_fn, out_shardings=placed)(*args), placed, None, {})
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, placed)
    items = restore_items(run_dir, step, to_items(target), json_items)
    return Loaded(from_items(items), placed, step, {k: items[k] for k in json_items})

