"""What a run needs before its first step: data sources and the input scale, the resolved config,
and a run folder that is either fresh, a resumable run of the same config, or refused.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from jaxdict.atomic import write_json_atomic
from jaxdict.config import config_diff
from jaxdict.data import ArraySource, StoreSource
from jaxdict.sae.config import ConfigError
from jaxdict.sae.transcoder import column_scales, split_batch
from jaxdict.run_layout import CHECKPOINT_DIR, CONFIG_FILE, RESULT_FILE, run_format_version, write_run_format
from jaxdict.train.config import RunConfig
from jaxdict.train.metrics_log import METRICS_FILE, TB_DIR
# Keys that may change between an interrupted run and its resumption: where it lives, the mesh
# (checkpoints restore onto any mesh), and how often it logs, evaluates and saves — none of them
# changes the maths of the run.
RESUME_IGNORED = ("run.out_dir", "run.progress", "mesh", "run.log_every", "run.eval_every",
                  "run.checkpoint_every", "run.keep", "run.async_checkpoint", "run.max_consecutive_nonfinite")


class RunDirConflict(ConfigError):
    """The run folder holds a different run; the message lists what differs."""


class DataSources:
    """Train and eval sources, the input scale s (E‖s·x‖² = d_in, DESIGN.md §4) and store metadata."""

    def __init__(self, train: Any, eval: Any, input_scale: Any, model: str = "", hook: str = "",
                 mean: np.ndarray | None = None, target_hook: str = ""):
        # input_scale: a float, or a transcoder's (s_in, s_out) (sae/transcoder.py)
        self.train, self.eval, self.input_scale = train, eval, input_scale
        self.model, self.hook, self.target_hook = model, hook, target_hook
        # mean of the raw activations [d_in]; None = estimate it from the first training rows
        self.mean = mean

    def data_mean(self, n_rows: int = 65536) -> np.ndarray:
        if self.mean is None:
            x = np.asarray(self.train.read(0, min(self.train.n_rows, n_rows)), np.float64)
            self.mean = x[np.all(np.isfinite(x), axis=1)].mean(axis=0)
        return np.asarray(self.mean, np.float64)


def input_scale_from_rows(rows: np.ndarray) -> float:
    """sqrt(d_in / E‖x‖²) over the finite rows among the given [N, d_in] (a stray NaN row must
    not poison the scale; the train step skips such batches)."""
    x = np.asarray(rows, np.float64)
    x = x[np.all(np.isfinite(x), axis=1)]
    mean_sq_norm = float(np.mean(np.sum(x * x, axis=1)))
    if not (math.isfinite(mean_sq_norm) and mean_sq_norm > 0):
        raise ConfigError(f"cannot normalise inputs: E‖x‖² = {mean_sq_norm} over {len(x)} rows")
    return math.sqrt(x.shape[1] / mean_sq_norm)


def open_sources(cfg: RunConfig) -> DataSources:
    """The sources named by `cfg.data`, checked against the SAE (refuses a mismatched store)."""
    data, sae = cfg.data, cfg.sae
    if data.source == "planted":
        from jaxdict.testing import planted_dictionary

        planted = planted_dictionary(d_in=sae.d_in, n_planted=data.planted_features,
                                     mean_active=data.planted_mean_active, seed=data.planted_seed)
        x, _ = planted.sample(data.planted_rows, seed=data.planted_seed)
        train = ArraySource(x, split="train", eval_fraction=data.eval_fraction)
        evals = ArraySource(x, split="eval", eval_fraction=data.eval_fraction)
        rows = train.read(0, min(train.n_rows, data.scale_rows))
        return DataSources(train, evals, input_scale_from_rows(rows), model="planted",
                           hook=f"planted_seed={data.planted_seed}", mean=rows.astype(np.float64).mean(axis=0))
    if sae.is_transcoder or data.target_store:
        return open_paired_sources(cfg)
    from jaxdict.store import open_store

    store = open_store(data.store)
    if store.d_in != sae.d_in:
        raise ConfigError(f"store {data.store} holds activations of d_in={store.d_in}, but sae.d_in = "
                          f"{sae.d_in}; set sae.d_in={store.d_in} or use a store of the matching hook")
    meta = store.metadata
    for field in ("model", "hook"):
        want, have = getattr(data, field), str(meta.get(field, ""))
        if want and want != have:
            raise ConfigError(f"data.{field} = {want!r} but store {data.store} was harvested with "
                              f"{field} {have!r}; point data.store at a matching store or clear data.{field}")
    train = StoreSource(store, split="train", eval_fraction=data.eval_fraction)
    evals = StoreSource(store, split="eval", eval_fraction=data.eval_fraction)
    scale = math.sqrt(sae.d_in / float(store.stats["mean_sq_norm"]))
    return DataSources(train, evals, scale, model=str(meta.get("model", "")), hook=str(meta.get("hook", "")),
                       mean=np.asarray(store.stats["mean"], np.float64))


def open_paired_sources(cfg: RunConfig) -> DataSources:
    """A transcoder's sources: rows [x | y] of data.store (input, sae.d_in wide) beside the row-aligned
    data.target_store (target, sae.d_out wide), each side with its own scale (sae/transcoder.py)."""
    from jaxdict.data.paired import PairedSource

    data, sae = cfg.data, cfg.sae
    if not sae.is_transcoder:
        raise ConfigError(f"data.target_store = {data.target_store!r} trains a transcoder, but sae.d_out is "
                          "unset; set sae.d_out to the target store's width (or clear data.target_store)")
    if not data.target_store or data.source != "store":
        raise ConfigError(f"sae.d_out = {sae.d_out} (a transcoder) needs data.source='store' and "
                          "data.target_store = <the store of its target hook, row-aligned with data.store>")
    train = PairedSource(data.store, data.target_store, split="train", eval_fraction=data.eval_fraction)
    evals = PairedSource(data.store, data.target_store, split="eval", eval_fraction=data.eval_fraction, check=False)
    stores = {"input": (train.inputs.store, sae.d_in, data.hook), "target": (train.targets.store, sae.d_out,
                                                                            data.target_hook)}
    scales, means, hooks = [], [], {}
    for side, (store, width, want_hook) in stores.items():
        field = "d_in" if side == "input" else "d_out"
        if store.d_in != width:
            raise ConfigError(f"the {side} store {store.path} holds activations of width {store.d_in}, but "
                              f"sae.{field} = {width}; set sae.{field}={store.d_in} or pair the matching hook")
        hooks[side] = str(store.metadata.get("hook", ""))
        if want_hook and want_hook != hooks[side]:
            name = "data.hook" if side == "input" else "data.target_hook"
            raise ConfigError(f"{name} = {want_hook!r} but {store.path} was harvested at {hooks[side]!r}")
        scales.append(math.sqrt(width / float(store.stats["mean_sq_norm"])))
        means.append(np.asarray(store.stats["mean"], np.float64))
    model = str(train.inputs.store.metadata.get("model", ""))
    if data.model and data.model != model:
        raise ConfigError(f"data.model = {data.model!r} but {data.store} was harvested with model {model!r}")
    return DataSources(train, evals, np.asarray(scales, np.float32), model=model, hook=hooks["input"],
                       mean=np.concatenate(means), target_hook=hooks["target"])


def initial_b_dec(cfg: RunConfig, sources: DataSources) -> np.ndarray | None:
    """The decoder bias a fresh run starts from: the mean of the normalised training rows (of a
    transcoder's target) (run.init_b_dec = "mean"), or None for init_params' zeros ("zero")."""
    if cfg.run.init_b_dec != "mean":
        return None
    scaled = sources.data_mean(cfg.data.scale_rows) * np.asarray(column_scales(sources.input_scale, cfg.sae))
    return np.asarray(split_batch(scaled, cfg.sae)[1], np.float32)


# The JumpReLU fields derive_from_data measures when they are left unset.
DERIVED_SAE_FIELDS = ("jumprelu_bandwidth", "jumprelu_init_threshold", "l0_coeff")


def reuse_derived(cfgs: list[RunConfig], run_dirs: list[str]) -> list[RunConfig]:
    """The derived JumpReLU fields a run being resumed measured when it started, for the fields this
    config leaves unset. Measuring them again gives values that can differ in the last bits (another
    BLAS thread count, another jaxdict version's reduction order), which would make the resumed run's
    config differ from its saved one and refuse to resume; one shared compiled step also needs one
    value for every member, so the first member's folder decides."""
    import dataclasses

    saved = read_json(Path(run_dirs[0]) / CONFIG_FILE) if run_dirs else None
    saved_sae = (saved or {}).get("sae") or {}
    if cfgs[0].sae.arch != "jumprelu" or saved_sae.get("arch") != "jumprelu":
        return cfgs
    fill = {f: saved_sae[f] for f in DERIVED_SAE_FIELDS
            if getattr(cfgs[0].sae, f) is None and saved_sae.get(f) is not None}
    return [dataclasses.replace(c, sae=dataclasses.replace(c.sae, **fill)) for c in cfgs] if fill else cfgs


def derive_from_data(cfgs: list[RunConfig], sources: DataSources) -> list[RunConfig]:
    """Fill the JumpReLU scales left unset (ε, θ₀, the penalty coefficient) from the first batch of
    training rows at initialisation (jaxdict/sae/jumprelu_recipe.py). One measurement, with the first
    config's seed, serves every member of a sweep axis, so they still share one compiled step."""
    import dataclasses

    import jax

    from jaxdict.sae import jumprelu_recipe
    from jaxdict.sae.params import init_params

    sae = cfgs[0].sae
    unset = tuple(getattr(sae, f) for f in DERIVED_SAE_FIELDS)
    if sae.arch != "jumprelu" or None not in unset:
        return cfgs
    n_rows = min(sources.train.n_rows, max(cfgs[0].data.batch_size, 1024), 8192)
    rows = np.asarray(sources.train.read(0, n_rows), np.float64) * np.asarray(column_scales(sources.input_scale, sae))
    x, target = split_batch(rows, sae)
    b_dec = initial_b_dec(cfgs[0], sources)
    # A transcoder encodes x W_enc + b_enc: its b_dec (output space) is not subtracted first.
    b_dec = np.zeros(sae.d_in) if b_dec is None or sae.is_transcoder else b_dec
    W_enc = np.asarray(init_params(sae, jax.random.PRNGKey(cfgs[0].run.seed)).W_enc)
    stats = jumprelu_recipe.measure_preacts(sae, W_enc, b_dec, x, target)
    return [dataclasses.replace(c, sae=jumprelu_recipe.derive_config(c.sae, stats)) for c in cfgs]


def resolve(cfg: RunConfig, sources: DataSources, run_dir: str) -> dict:
    """The resolved config (saved as config.json and in every checkpoint)."""
    d = cfg.to_dict()
    d["data"]["model"] = sources.model
    d["data"]["hook"] = sources.hook
    d["data"]["d_in"] = cfg.sae.d_in
    if cfg.sae.is_transcoder:
        d["data"]["target_hook"] = sources.target_hook
    d["run"]["out_dir"] = str(run_dir)
    return d


def _write_json(path: Path, obj: Any) -> None:
    write_json_atomic(path, obj, sort_keys=True)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def with_new_defaults(existing: dict) -> dict:
    """An older run's config with the fields added to the configs since at their defaults (a new
    field's default must reproduce what jaxdict did before it existed), so an old run resumes."""
    filled = json.loads(json.dumps(existing))
    for section, fields in RunConfig().to_dict().items():
        filled.setdefault(section, fields)  # a section added since (clt: None for SAE runs)
        if isinstance(filled.get(section), dict) and isinstance(fields, dict):
            for key, value in fields.items():
                filled[section].setdefault(key, value)
    return filled


def prepare_run_dir(run_dir: str | Path, resolved: dict, force: bool, write: bool) -> bool:
    """Make `run_dir` ready. Returns True when it already holds this run (resume).

    A folder with a different config.json is refused (naming what differs) unless `force`, which
    deletes that run's checkpoints, metrics and result first. `write`: this process writes files
    (process 0 only)."""
    run_dir = Path(run_dir)
    existing = read_json(run_dir / CONFIG_FILE)
    if existing is not None:
        run_format_version(run_dir)  # refuses a folder written by a newer jaxdict
        diff = config_diff(with_new_defaults(existing), resolved, ignore=RESUME_IGNORED)
        if not diff:
            if write:
                _write_json(run_dir / CONFIG_FILE, resolved)
                write_run_format(run_dir)
            return True
        if not force:
            shown = "\n  ".join(diff[:20])
            raise RunDirConflict(f"{run_dir} holds a run with a different config:\n  {shown}\n"
                                 "use another --out folder, or --force to delete that run and start over")
        if write:
            for name in (CHECKPOINT_DIR, TB_DIR, "profile"):
                shutil.rmtree(run_dir / name, ignore_errors=True)
            for name in (METRICS_FILE, RESULT_FILE):
                (run_dir / name).unlink(missing_ok=True)
    elif (run_dir / CHECKPOINT_DIR).is_dir() and any((run_dir / CHECKPOINT_DIR).iterdir()) and not force:
        raise RunDirConflict(f"{run_dir} holds checkpoints but no {CONFIG_FILE}; refusing to mix runs "
                             "(use --force to delete them)")
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        if force:
            shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
        _write_json(run_dir / CONFIG_FILE, resolved)
        write_run_format(run_dir)
    return False


def write_result(run_dir: str | Path, result: dict) -> None:
    _write_json(Path(run_dir) / RESULT_FILE, result)
