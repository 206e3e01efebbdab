"""The training driver: one linear loop around the pure step (DESIGN.md §5), for one run or a sweep
axis of N runs whose shapes agree (trained together on the same batches under vmap, each with its
own run folder, checkpoints and metrics).

    results = train_group([cfg_a, cfg_b], ["runs/a", "runs/b"])   # or train(cfg, "runs/a")

Order of work: sources and input scale → resolved configs and run folders → mesh → abstract state
and shardings → restore (latest step common to every member) or initialise → loop. The loop
fetches metrics to the host only at log/eval/check intervals; it saves asynchronously every
`checkpoint_every` steps, on SIGTERM / the JAX preemption sync point (then returns, preempted),
and at the end.
"""
from __future__ import annotations

import dataclasses
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np

from jaxdict.data import ActivationLoader
from jaxdict.sae.config import ConfigError
from jaxdict.train import checkpoint as ckpt
from jaxdict.train.config import PER_MEMBER_FIELDS, RunConfig, group_key
from jaxdict.train.heldout import HeldoutEval
from jaxdict.train.mesh import make_mesh
from jaxdict.train.metrics_log import MetricsLog, Progress, read_metrics
from jaxdict.train.run_setup import (RESULT_FILE, DataSources, derive_from_data, initial_b_dec, open_sources,
                                     prepare_run_dir, read_json, resolve, reuse_derived, write_result)
from jaxdict.train.state import TrainState, load_or_init_state
from jaxdict.train.step_builder import BuiltStep, build_train_step

Callback = Callable[[str, int], None]  # (event, step): "step" after a step, "saved" after a save starts


@dataclasses.dataclass
class RunResult:
    name: str
    run_dir: str
    step: int
    finished: bool  # reached total_steps (or stopped as diverged)
    preempted: bool
    diverged: bool
    stop_reason: str
    n_nonfinite: int
    wall_time_s: float
    eval: dict  # held-out metrics at the end (empty when preempted)


def _check_group(cfgs: list[RunConfig]) -> None:
    if not cfgs:
        raise ConfigError("no configs to train")
    names = [c.run.name for c in cfgs]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep-axis members need distinct run.name values, got {names}")
    key = group_key(cfgs[0])
    for c in cfgs[1:]:
        if group_key(c) != key:
            from jaxdict.config import config_diff

            diff = config_diff(cfgs[0].to_dict(), c.to_dict(), ignore=PER_MEMBER_FIELDS)
            raise ConfigError(f"runs {cfgs[0].run.name!r} and {c.run.name!r} cannot share one pass "
                              f"(only λ, lr and seed may differ): {'; '.join(diff[:5])}")


class _Preemption:
    """SIGTERM → a flag checked after each step (single process). With several processes JAX's
    preemption sync point (via Orbax) makes every process stop at the same step instead."""

    def __init__(self, enabled: bool):
        self.requested = False
        self._old = None
        if enabled and threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def train(cfg: RunConfig, run_dir: str | None = None, **kwargs) -> RunResult:
    """Train one run; see `train_group`."""
    return train_group([cfg], None if run_dir is None else [run_dir], **kwargs)[0]


def train_group(
    cfgs: list[RunConfig],
    run_dirs: list[str] | None = None,
    *,
    force: bool = False,
    sources: DataSources | None = None,
    callback: Callback | None = None,
    profile_steps: int = 0,
    log: Callable[[str], None] = print,
) -> list[RunResult]:
    """Train `cfgs` in one pass over the data (a sweep axis when there are several) until
    optim.total_steps, resuming from the run folders' latest common checkpoint."""
    group = setup_group(cfgs, run_dirs, force=force, sources=sources, log=log)
    loop = TrainLoop(group, callback=callback, profile_steps=profile_steps, log=log)
    try:
        done = loop.run()
        loop.finish(done)
    finally:
        loop.close()
    return loop.results(done)


@dataclasses.dataclass
class Group:
    """A run group ready for its first step: configs, folders, data, mesh, the built step, the
    checkpoint managers, the step it starts from and its (stacked) state and loader position."""

    cfgs: list[RunConfig]
    run_dirs: list[str]
    resolved: list[dict]
    sources: DataSources
    mesh: Mesh
    built: BuiltStep
    managers: list
    start: int
    state: TrainState
    data_state: dict | None
    # A CLT group (jaxdict/clt/train_setup.py) brings its own checkpoint items and held-out
    # evaluation; None: the SAE's (jaxdict.train.state.to_items, HeldoutEval).
    to_items: Callable | None = None
    evaluator: Callable | None = None

    @property
    def base(self) -> RunConfig:
        return self.cfgs[0]

    @property
    def n(self) -> int:
        return len(self.cfgs)


def setup_group(cfgs: list[RunConfig], run_dirs: list[str] | None, *, force: bool = False,
                sources: DataSources | None = None, log: Callable[[str], None] = print) -> Group:
    """Sources and input scale → resolved configs and run folders → mesh and the built step →
    restore (latest step common to every member) or initialise, stacked for a sweep axis. CLT
    configs (a `clt` section) go to jaxdict.clt.train_setup.setup_clt_group."""
    _check_group(cfgs)
    run_dirs = [str(d) for d in (run_dirs or [c.run.out_dir for c in cfgs])]
    if any(not d for d in run_dirs):
        raise ConfigError("every run needs a folder: set run.out_dir or pass --out")
    base = cfgs[0]
    if base.clt is not None:
        from jaxdict.clt.train_setup import setup_clt_group

        return setup_clt_group(cfgs, run_dirs, force=force, sources=sources, log=log)
    mesh = make_mesh(base.mesh.data, base.mesh.model)
    sources = sources or open_sources(base)
    if sources.train.d_in != base.sae.batch_width:
        what = "d_in + d_out" if base.sae.is_transcoder else "d_in"
        raise ConfigError(f"data rows have width {sources.train.d_in} but sae.{what} = {base.sae.batch_width}")
    # JumpReLU's ε, θ₀ and penalty scale come from the first batch (or, on resume, from the run's
    # saved config unless --force starts it over); the step is built with them.
    cfgs = derive_from_data(cfgs if force else reuse_derived(cfgs, run_dirs), sources)
    base = cfgs[0]
    built = build_train_step(base, mesh, sweep_size=len(cfgs) if len(cfgs) > 1 else None)
    resolved = [resolve(c, sources, d) for c, d in zip(cfgs, run_dirs)]
    existed = [prepare_run_dir(d, r, force, write=jax.process_index() == 0) for d, r in zip(run_dirs, resolved)]
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxdict run folders ready")
    managers = [ckpt.make_manager(d, base.run.keep, base.run.async_checkpoint) for d in run_dirs]
    start = common_resume_step(managers) if all(existed) else 0
    b_dec = None if start else initial_b_dec(base, sources)
    members = [load_or_init_state(c.sae, c.optim, mesh, seed=c.run.seed, input_scale=sources.input_scale,
                                  hparams={"lr": c.optim.lr, "sparsity_coeff": c.sparsity_coeff}, b_dec=b_dec,
                                  run_dir=d if start else None, step=start or None, shard=base.mesh.shard)
               for c, d in zip(cfgs, run_dirs)]
    if start:
        log(f"resuming {', '.join(c.run.name for c in cfgs)} from step {start}")
    state = stack_members(built, [m.value for m in members])
    return Group(cfgs=cfgs, run_dirs=run_dirs, resolved=resolved, sources=sources, mesh=mesh, built=built,
                 managers=managers, start=start, state=state, data_state=members[0].json.get("data_iter"))


def common_resume_step(managers: list) -> int:
    """The latest step every member saved (0: none). A crash between the members' saves can leave
    one member a step ahead: that step is dropped, so the group resumes together."""
    common = set.intersection(*[set(m.all_steps()) for m in managers])
    start = max(common) if common else 0
    for m in managers:
        for extra in [s for s in m.all_steps() if s > start]:
            m.delete(extra)
    return start


def stack_members(built: BuiltStep, states: list[TrainState]) -> TrainState:
    """One state for the step: the member itself, or the members stacked on a leading sweep axis."""
    if built.sweep_size is None:
        return states[0]
    return jax.jit(lambda *s: jax.tree.map(lambda *x: jnp.stack(x), *s), out_shardings=built.state_shardings)(*states)


def member_unstacker(built: BuiltStep) -> Callable[[TrainState], tuple[TrainState, ...]]:
    """state -> its members (compiled once per group, used at every save)."""
    if built.sweep_size is None:
        return lambda state: (state,)
    n = built.sweep_size
    return jax.jit(lambda s: tuple(jax.tree.map(lambda x: x[i], s) for i in range(n)),
                   out_shardings=tuple([built.member_shardings] * n))


class TrainLoop:
    """The steps of a group from `start` to optim.total_steps. What changes while it runs is held
    in named attributes: `state`, `diverged`/`reasons` per member, `eval_results`, `preempted`.
    Metrics reach the host only at log/check intervals; saves are asynchronous."""

    def __init__(self, group: Group, *, callback: Callback | None = None, profile_steps: int = 0,
                 log: Callable[[str], None] = print):
        self.g, self.callback, self.profile_steps, self.log = group, callback, profile_steps, log
        base, n, is_main = group.base, group.n, jax.process_index() == 0
        self.state = group.state
        self.unstack = member_unstacker(group.built)
        loader = ActivationLoader(group.sources.train, base.data.batch_size, group.mesh, seed=base.data.seed,
                                  slab_rows=min(base.data.slab_rows, group.sources.train.n_rows // jax.process_count()),
                                  shuffle_buffer_rows=base.data.shuffle_buffer_rows,
                                  dtype=group.built.abstract_batch.dtype)
        self.it = iter(loader)
        if group.data_state is not None:
            self.it.set_state(group.data_state)
        self.evaluator = group.evaluator or HeldoutEval(
            group.sources.eval, base.sae, group.mesh, base.data.batch_size, base.data.eval_rows,
            base.data.slab_rows, group.built.state_shardings, group.built.sweep_size)
        self.logs = [MetricsLog(d, is_main, group.start) for d in group.run_dirs]
        # wall time already spent by an interrupted run, from its last logged record
        self.wall0 = [float(next(iter(read_metrics(d, "train")[-1:]), {}).get("wall_time_s", 0.0))
                      for d in group.run_dirs]
        rs = base.run
        self.progress = Progress(base.optim.total_steps, group.start, base.data.batch_size, is_main and rs.progress,
                                 desc=base.run.name if n == 1 else f"{n} runs")
        self.preempt = _Preemption(enabled=jax.process_count() == 1)
        self.diverged, self.reasons = [False] * n, [""] * n
        self.check_every = max(1, min(rs.max_consecutive_nonfinite, rs.log_every or rs.max_consecutive_nonfinite))
        self.t_start = self.t_log = time.time()
        self.step_log = group.start
        self.preempted = False
        self.eval_results: list[dict] = [{} for _ in range(n)]

    def run(self) -> int:
        """Steps until total_steps, all members diverged, or preemption; returns the last step."""
        rs, total = self.g.base.run, self.g.base.optim.total_steps
        done = total
        for done in range(self.g.start + 1, total + 1):
            metrics = self.step(done)
            last = done == total
            if (rs.log_every and done % rs.log_every == 0) or last:
                self.write_metrics(done, metrics)
            if (done % self.check_every == 0 or last) and self.check_divergence(done):
                break
            if rs.eval_every and done % rs.eval_every == 0 and not last:
                self.evaluate(done)
            if rs.checkpoint_every and done % rs.checkpoint_every == 0 and not last:
                self.save(done)
            if (self.preempt.requested or self.g.managers[0].reached_preemption(done)) and not last:
                self.save(done)
                self.preempted = True
                self.log(f"preempted at step {done}: checkpoint saved, exiting")
                break
        return done

    def step(self, done: int) -> dict:
        """One optimiser step (with the profiler trace around steps start+2 .. start+1+profile_steps)."""
        first_traced = self.g.start + 2
        if self.profile_steps and done == first_traced:
            jax.profiler.start_trace(str(Path(self.g.run_dirs[0]) / "profile"))
        self.state, metrics = self.g.built.step(self.state, next(self.it))
        if self.profile_steps and done == first_traced + self.profile_steps:
            jax.block_until_ready(self.state)
            jax.profiler.stop_trace()
            self.profile_steps = 0
        if self.callback:
            self.callback("step", done)
        return metrics

    def write_metrics(self, done: int, metrics: dict) -> None:
        g, sweep = self.g, self.g.built.sweep_size
        host = jax.device_get(metrics)
        now = time.time()
        batch = g.base.data.batch_size
        tok_s = (done - self.step_log) * batch / max(now - self.t_log, 1e-9)
        for i in range(g.n):
            rec = {k: (v[i] if sweep else v) for k, v in host.items()}
            rec.update(tokens=done * batch, tokens_per_s=tok_s, wall_time_s=self.wall0[i] + now - self.t_start)
            self.logs[i].write(done, "train", rec)
        self.progress.update(done - self.step_log, {k: (v[0] if sweep else v) for k, v in host.items()}, tok_s)
        self.t_log, self.step_log = now, done

    def check_divergence(self, done: int) -> bool:
        """Marks members with run.max_consecutive_nonfinite skipped steps in a row as diverged (they
        save no more); True when every member has."""
        limit = self.g.base.run.max_consecutive_nonfinite
        streak = np.atleast_1d(jax.device_get(self.state.consecutive_nonfinite))
        for i, run_dir in enumerate(self.g.run_dirs):
            if not self.diverged[i] and streak[i] >= limit:
                self.diverged[i] = True
                good = ckpt.latest_step(run_dir)
                self.reasons[i] = (f"{int(streak[i])} consecutive non-finite steps (limit "
                                   f"run.max_consecutive_nonfinite={limit}) at step {done}; stopped; last good "
                                   f"checkpoint: {'step ' + str(good) if good is not None else 'none'} in {run_dir}")
                self.log(f"{self.g.cfgs[i].run.name}: {self.reasons[i]}")
        return all(self.diverged)

    def save(self, step: int) -> None:
        data_iter_state = self.it.get_state()
        for i, member in enumerate(self.unstack(self.state)):
            if not self.diverged[i]:
                ckpt.save(self.g.managers[i], step, member, data_iter_state, self.g.resolved[i],
                          to_items=self.g.to_items)
        if self.callback:
            self.callback("saved", step)

    def evaluate(self, step: int) -> None:
        self.eval_results = self.evaluator(self.state)
        for i in range(self.g.n):
            self.logs[i].write(step, "eval", self.eval_results[i])

    def finish(self, done: int) -> None:
        """The final save and held-out evaluation; a group already at total_steps keeps the
        recorded result rather than saving again."""
        if self.preempted or all(self.diverged):
            return
        if done > self.g.start:
            self.save(done)
            self.evaluate(done)
            return
        previous = [read_json(Path(d) / RESULT_FILE) for d in self.g.run_dirs]
        if all(previous):
            self.eval_results = [p["eval"] for p in previous]
        else:
            self.evaluate(done)

    def close(self) -> None:
        for m in self.g.managers:
            m.wait_until_finished()
        self.progress.close()
        self.preempt.restore()
        self.it.close()

    def results(self, done: int) -> list[RunResult]:
        final_wall = time.time() - self.t_start
        n_nonfinite = np.atleast_1d(jax.device_get(self.state.n_nonfinite))
        results = []
        for i, cfg in enumerate(self.g.cfgs):
            self.logs[i].close()
            self.g.managers[i].close()
            r = RunResult(name=cfg.run.name, run_dir=self.g.run_dirs[i], step=done, finished=not self.preempted,
                          preempted=self.preempted, diverged=self.diverged[i], stop_reason=self.reasons[i],
                          n_nonfinite=int(n_nonfinite[i]), wall_time_s=self.wall0[i] + final_wall,
                          eval=self.eval_results[i] if not self.diverged[i] else {})
            if r.finished and jax.process_index() == 0:
                write_result(self.g.run_dirs[i], dataclasses.asdict(r))
            results.append(r)
        return results
