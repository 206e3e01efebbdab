"""RunConfig: the SAE, optimiser, data, mesh and run settings of one training run, composed from
small frozen dataclasses (DESIGN.md §5 point 5), and how configs are read from files.

Config files are Python modules (experiments/*.py) exposing `CONFIGS: {name: RunConfig | () ->
RunConfig}` and/or `SWEEPS: {variant: [RunConfig] | () -> [RunConfig]}`, or a JSON file holding a
resolved config (what every run writes to `<run_dir>/config.json`).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from jaxdict.clt.config import CLTConfig
from jaxdict.config import config_from_dict, config_to_dict, load_module, split_spec
from jaxdict.sae.config import ConfigError, SAEConfig, check_finite_fields
from jaxdict.train.optim import OptimConfig


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where activations come from and how they are batched.

    source "store": an activation store at `store` (its model/hook must equal `model`/`hook` when
    those are given). source "planted": synthetic activations with a planted sparse dictionary
    (jaxdict.testing), for CPU-sized experiments and tests without a harvested store.
    """

    source: Literal["store", "planted"] = "store"
    store: str = ""
    model: str = ""  # expected store metadata; "" = accept the store's (the resolved config records it)
    hook: str = ""
    # A transcoder's target: a store row-aligned with `store` (harvested in the same run, e.g.
    # store acts/mlp_in.9, target_store acts/mlp_out.9), and the hook it must hold ("" = accept).
    target_store: str = ""
    target_hook: str = ""
    batch_size: int = 4096
    eval_fraction: float = 0.01  # documents held out for evaluation (hash split, jaxdict.data.split)
    seed: int = 0  # shuffle seed of the loader (shared by every member of a sweep axis)
    slab_rows: int = 4096
    shuffle_buffer_rows: int = 32768
    eval_rows: int = 65536  # at most this many held-out rows per evaluation
    scale_rows: int = 65536  # rows used to estimate the input scale when the source has no stats
    planted_rows: int = 262144
    planted_features: int = 256
    planted_mean_active: float = 4.0
    planted_seed: int = 0

    def __post_init__(self) -> None:
        check_finite_fields(self)
        if self.source not in ("store", "planted"):
            raise ConfigError(f"data.source = {self.source!r}; valid: store, planted")
        if self.source == "store" and not self.store:
            raise ConfigError("data.source = 'store' needs data.store = <path of an activation store>")
        for name in ("batch_size", "slab_rows", "shuffle_buffer_rows", "eval_rows", "scale_rows",
                     "planted_rows", "planted_features"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"data.{name} = {value!r}; must be a positive integer")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ConfigError(f"data.eval_fraction = {self.eval_fraction}; must lie in (0, 1)")
        if self.seed < 0 or self.planted_seed < 0:
            raise ConfigError(f"data seeds must be >= 0 (seed={self.seed}, planted_seed={self.planted_seed})")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """`data × model` devices; data=None takes every device not used by `model`. `shard`: how
    parameters and optimiser state are stored — "model" (features over the model axis) or "fsdp"
    (features over model × data, gathered by the step; jaxdict/train/mesh.py)."""

    data: int | None = None
    model: int = 1
    shard: Literal["model", "fsdp"] = "model"

    def __post_init__(self) -> None:
        if self.model < 1 or (self.data is not None and self.data < 1):
            raise ConfigError(f"mesh.data = {self.data}, mesh.model = {self.model}; both must be >= 1")
        if self.shard not in ("model", "fsdp"):
            raise ConfigError(f"mesh.shard = {self.shard!r}; valid: model, fsdp")


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Bookkeeping of one run. Every `*_every` counts optimiser steps; 0 disables (eval still runs
    once at the end)."""

    name: str = "run"
    out_dir: str = ""  # run folder; the command line (--out) or the sweep runner usually sets it
    seed: int = 0  # initialisation seed of the SAE
    log_every: int = 50
    checkpoint_every: int = 1000
    keep: int = 2  # checkpoints kept (the latest always among them)
    eval_every: int = 0
    max_consecutive_nonfinite: int = 20
    async_checkpoint: bool = True
    progress: bool = True
    # Decoder bias at step 0: "mean" = the mean of the (normalised) training data, as OpenAI
    # initialise their pre-encoder bias from the data (Gao et al. 2024, geometric median) and
    # SAELens offers; residual streams have a large mean (Gemma 3 270M resid_post.9: ‖μ‖² ≈ 93 %
    # of E‖x‖²) that Adam at lr ~1e-4 would need thousands of steps to learn from 0.
    init_b_dec: Literal["mean", "zero"] = "mean"

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"run.name = {self.name!r}; must be non-empty without '/'")
        for name in ("log_every", "checkpoint_every", "eval_every", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"run.{name} = {getattr(self, name)}; must be >= 0")
        if self.keep < 1:
            raise ConfigError(f"run.keep = {self.keep}; must be >= 1 (the latest checkpoint is always kept)")
        if self.init_b_dec not in ("mean", "zero"):
            raise ConfigError(f"run.init_b_dec = {self.init_b_dec!r}; valid: mean, zero")
        if self.max_consecutive_nonfinite < 1:
            raise ConfigError(f"run.max_consecutive_nonfinite = {self.max_consecutive_nonfinite}; must be >= 1")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One run. `clt` set: the run trains a cross-layer transcoder (jaxdict/clt/, driven by
    jaxdict/clt/train_driver.py) instead of the SAE; `sae` is then unused and stays at its default,
    and data.store names the folder holding the 2L stores resid_mid.0 … mlp_out.{L−1}."""

    sae: SAEConfig = SAEConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig(source="planted")
    mesh: MeshConfig = MeshConfig()
    run: RunSettings = RunSettings()
    clt: CLTConfig | None = None

    def __post_init__(self) -> None:
        if self.clt is None:
            return
        if self.sae != SAEConfig():
            from jaxdict.config import config_diff

            diff = config_diff(SAEConfig().__dict__, self.sae.__dict__)
            raise ConfigError(f"a CLT run (clt set) does not use the sae section; leave it at its defaults "
                              f"(differs: {'; '.join(diff[:5])})")
        if self.data.target_store or self.data.target_hook or self.data.hook:
            raise ConfigError("a CLT run reads data.store/resid_mid.l and data.store/mlp_out.l; leave data.hook, "
                              f"data.target_store and data.target_hook empty (got {self.data.hook!r}, "
                              f"{self.data.target_store!r}, {self.data.target_hook!r})")
        if self.mesh.shard != "model":
            raise ConfigError(f"mesh.shard = {self.mesh.shard!r}: a CLT stores its features over `model` "
                              "only; valid for CLTs: model")

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        data = json.loads(json.dumps(data))
        # `data.d_in` is recorded in resolved configs for readers; it always equals sae.d_in.
        d_in = data.get("data", {}).pop("d_in", None)
        cfg = config_from_dict(cls, data)
        if d_in is not None and d_in != cfg.sae.d_in:
            raise ConfigError(f"resolved config has data.d_in = {d_in} but sae.d_in = {cfg.sae.d_in}")
        return cfg

    @property
    def is_clt(self) -> bool:
        return self.clt is not None

    @property
    def sparsity_coeff(self) -> float:
        from jaxdict.sae.jumprelu_recipe import penalty_coeff

        if self.clt is not None:
            return self.clt.sparsity_coeff
        return self.sae.l1_coeff if self.sae.arch == "relu_l1" else penalty_coeff(self.sae)

    @property
    def tokens(self) -> int:
        return self.optim.total_steps * self.data.batch_size


# Fields that may differ between members of one sweep axis: they only enter the step through the
# traced per-member hparams (lr, λ) or the initial state (seed) — see jaxdict/train/state.py.
# A CLT's λ likewise (jaxdict/clt/train_step.py).
PER_MEMBER_FIELDS = ("sae.l1_coeff", "sae.l0_coeff", "clt.sparsity_coeff", "optim.lr", "run.seed", "run.name",
                     "run.out_dir")


def group_key(cfg: RunConfig) -> str:
    """Configs with equal keys can share one pass over the data (a sweep axis)."""
    d = cfg.to_dict()
    for dotted in PER_MEMBER_FIELDS:
        section, field = dotted.split(".")
        if isinstance(d.get(section), dict):
            d[section].pop(field)
    return json.dumps(d, sort_keys=True)


def _materialise(entry: Any, what: str) -> Any:
    return entry() if callable(entry) else entry


def load_sweep_points(path: str | Path, variant: str | None) -> list[RunConfig]:
    """The configs of `SWEEPS[variant]` in a Python sweep file (variant None: the only one)."""
    module = load_module(path)
    sweeps = getattr(module, "SWEEPS", None)
    if not isinstance(sweeps, dict) or not sweeps:
        raise ConfigError(f"{path} defines no SWEEPS dict {{variant: [RunConfig] or function}}")
    if variant is None:
        if len(sweeps) != 1:
            raise ConfigError(f"{path} has several sweeps; choose one as {path}:VARIANT, "
                              f"VARIANT in {', '.join(sweeps)}")
        variant = next(iter(sweeps))
    if variant not in sweeps:
        import difflib
        close = difflib.get_close_matches(variant, list(sweeps), n=3)
        raise ConfigError(f"{path} has no sweep {variant!r}"
                          f"{'; did you mean ' + ', '.join(close) + '?' if close else ''} "
                          f"valid: {', '.join(sweeps)}")
    points = list(_materialise(sweeps[variant], variant))
    for p in points:
        if not isinstance(p, RunConfig):
            raise ConfigError(f"{path}:{variant} yielded {type(p).__name__}, expected RunConfig")
    return points


def load_run_configs(spec: str) -> list[RunConfig]:
    """`file.json`, `file.py:NAME` (NAME in CONFIGS, a variant of SWEEPS, or a sweep point's
    run.name). Several configs come back only for a sweep variant."""
    path, name = split_spec(spec)
    if path.endswith(".json"):
        if not Path(path).is_file():
            raise ConfigError(f"config file {path!r} does not exist")
        data = json.loads(Path(path).read_text())
        items = data if isinstance(data, list) else [data]
        return [RunConfig.from_dict(d) for d in items]
    if not path.endswith(".py"):
        raise ConfigError(f"config {spec!r}: expected a .json file or a .py file[:NAME]")
    module = load_module(path)
    configs = getattr(module, "CONFIGS", None) or {}
    sweeps = getattr(module, "SWEEPS", None) or {}
    if name is None:
        if len(configs) == 1 and not sweeps:
            name = next(iter(configs))
        else:
            raise ConfigError(f"{path} holds several configs; name one as {path}:NAME, NAME in "
                              f"{', '.join([*configs, *sweeps])}")
    if name in configs:
        cfg = _materialise(configs[name], name)
        if not isinstance(cfg, RunConfig):
            raise ConfigError(f"{path}:{name} is a {type(cfg).__name__}, expected RunConfig")
        return [cfg]
    if name in sweeps:
        return load_sweep_points(path, name)
    for variant in sweeps:
        for point in load_sweep_points(path, variant):
            if point.run.name == name:
                return [point]
    import difflib
    valid = [*configs, *sweeps]
    close = difflib.get_close_matches(name, valid, n=3)
    raise ConfigError(f"{path} has no config, sweep or sweep point named {name!r}"
                      f"{'; did you mean ' + ', '.join(close) + '?' if close else ''} "
                      f"(configs and sweeps: {', '.join(valid)})")
