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
import numpy as np

from jaxdict.data import ActivationLoader
from jaxdict.sae.config import ConfigError
from jaxdict.train import checkpoint as ckpt
from jaxdict.train.config import RunConfig, group_key
from jaxdict.train.heldout import HeldoutEval
from jaxdict.train.mesh import check_divisible, make_mesh
from jaxdict.train.metrics_log import MetricsLog, Progress, read_metrics
from jaxdict.train.run_setup import (RESULT_FILE, DataSources, open_sources, prepare_run_dir, read_json,
                                     resolve, write_result)
from jaxdict.train.state import create_state
from jaxdict.train.step_builder import abstract_member_state, build_train_step

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

            diff = config_diff(cfgs[0].to_dict(), c.to_dict(),
                               ignore=("sae.l1_coeff", "sae.l0_coeff", "optim.lr", "run.seed", "run.name",
                                       "run.out_dir"))
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
    _check_group(cfgs)
    run_dirs = [str(d) for d in (run_dirs or [c.run.out_dir for c in cfgs])]
    if any(not d for d in run_dirs):
        raise ConfigError("every run needs a folder: set run.out_dir or pass --out")
    base = cfgs[0]
    sae, optim, n = base.sae, base.optim, len(cfgs)
    is_main = jax.process_index() == 0
    mesh = make_mesh(base.mesh.data, base.mesh.model)
    check_divisible(mesh, batch_size=base.data.batch_size, n_features=sae.n_features)
    sources = sources or open_sources(base)
    if sources.train.d_in != sae.d_in:
        raise ConfigError(f"data has d_in={sources.train.d_in} but sae.d_in = {sae.d_in}")
    resolved = [resolve(c, sources, d) for c, d in zip(cfgs, run_dirs)]
    existed = [prepare_run_dir(d, r, force, write=is_main) for d, r in zip(run_dirs, resolved)]
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxdict run folders ready")

    built = build_train_step(base, mesh, sweep_size=n if n > 1 else None)
    abstract, shardings = abstract_member_state(base), built.member_shardings
    managers = [ckpt.make_manager(d, base.run.keep, base.run.async_checkpoint) for d in run_dirs]
    common = set.intersection(*[set(m.all_steps()) for m in managers]) if all(existed) else set()
    start = max(common) if common else 0
    for m in managers:
        # A crash between the members' saves can leave one member a step ahead: drop that step,
        # the group resumes together from the latest step every member has.
        for extra in [s for s in m.all_steps() if s > start]:
            m.delete(extra)
    data_state = None
    if start:
        states = []
        for m in managers:
            state, data_state, _ = ckpt.restore(m, start, abstract, shardings)
            states.append(state)
        log(f"resuming {', '.join(c.run.name for c in cfgs)} from step {start}")
    else:
        states = [create_state(sae, optim, mesh, seed=c.run.seed, input_scale=sources.input_scale,
                               hparams={"lr": c.optim.lr, "sparsity_coeff": c.sparsity_coeff})[0] for c in cfgs]
        if base.run.init_b_dec == "mean":
            b_dec = jax.device_put(np.asarray(sources.data_mean(base.data.scale_rows) * sources.input_scale,
                                              np.float32), shardings.params.b_dec)
            states = [s.replace(params=s.params.replace(b_dec=b_dec)) for s in states]

    sweep, shardings_n = built.sweep_size, built.state_shardings
    if sweep:
        state = jax.jit(lambda *s: jax.tree.map(lambda *x: jnp.stack(x), *s), out_shardings=shardings_n)(*states)
        unstack = jax.jit(lambda s: tuple(jax.tree.map(lambda x: x[i], s) for i in range(n)),
                          out_shardings=tuple([shardings] * n))
    else:
        state = states[0]
        unstack = lambda s: (s,)  # noqa: E731
    del states
    step_fn = built.step
    loader = ActivationLoader(sources.train, base.data.batch_size, mesh, seed=base.data.seed,
                              slab_rows=min(base.data.slab_rows, sources.train.n_rows // jax.process_count()),
                              shuffle_buffer_rows=base.data.shuffle_buffer_rows, dtype=built.abstract_batch.dtype)
    it = iter(loader)
    if data_state is not None:
        it.set_state(data_state)
    evaluate = HeldoutEval(sources.eval, sae, mesh, base.data.batch_size, base.data.eval_rows,
                           base.data.slab_rows, shardings_n, sweep)
    logs = [MetricsLog(d, is_main, start) for d in run_dirs]
    wall0 = [float(next(iter(read_metrics(d, "train")[-1:]), {}).get("wall_time_s", 0.0)) for d in run_dirs]
    total, B, rs = optim.total_steps, base.data.batch_size, base.run
    progress = Progress(total, start, B, is_main and rs.progress, desc=cfgs[0].run.name if n == 1 else f"{n} runs")
    preempt = _Preemption(enabled=jax.process_count() == 1)
    diverged = [False] * n
    reasons = [""] * n
    check_every = max(1, min(rs.max_consecutive_nonfinite, rs.log_every or rs.max_consecutive_nonfinite))
    t_start = t_log = time.time()
    step_log = start
    preempted = False
    eval_results: list[dict] = [{} for _ in range(n)]

    def save(step: int) -> None:
        data_iter_state = it.get_state()
        for i, member in enumerate(unstack(state)):
            if not diverged[i]:
                ckpt.save(managers[i], step, member, data_iter_state, resolved[i])
        if callback:
            callback("saved", step)

    def write_eval(step: int) -> None:
        nonlocal eval_results
        eval_results = evaluate(state)
        for i in range(n):
            logs[i].write(step, "eval", eval_results[i])

    try:
        for done in range(start + 1, total + 1):
            if profile_steps and done == start + 2:
                jax.profiler.start_trace(str(Path(run_dirs[0]) / "profile"))
            state, metrics = step_fn(state, next(it))
            if profile_steps and done == start + 2 + profile_steps:
                jax.block_until_ready(state)
                jax.profiler.stop_trace()
                profile_steps = 0
            if callback:
                callback("step", done)
            last = done == total
            if (rs.log_every and done % rs.log_every == 0) or last:
                host = jax.device_get(metrics)
                now = time.time()
                tok_s = (done - step_log) * B / max(now - t_log, 1e-9)
                for i in range(n):
                    rec = {k: (v[i] if sweep else v) for k, v in host.items()}
                    rec.update(tokens=done * B, tokens_per_s=tok_s, wall_time_s=wall0[i] + now - t_start)
                    logs[i].write(done, "train", rec)
                progress.update(done - step_log, {k: (v[0] if sweep else v) for k, v in host.items()}, tok_s)
                t_log, step_log = now, done
            if done % check_every == 0 or last:
                streak = np.atleast_1d(jax.device_get(state.consecutive_nonfinite))
                for i in range(n):
                    if not diverged[i] and streak[i] >= rs.max_consecutive_nonfinite:
                        diverged[i] = True
                        good = ckpt.latest_step(run_dirs[i])
                        reasons[i] = (f"{int(streak[i])} consecutive non-finite steps (limit "
                                      f"run.max_consecutive_nonfinite={rs.max_consecutive_nonfinite}) at step {done}; "
                                      f"stopped; last good checkpoint: "
                                      f"{'step ' + str(good) if good is not None else 'none'} in {run_dirs[i]}")
                        log(f"{cfgs[i].run.name}: {reasons[i]}")
                if all(diverged):
                    break
            if rs.eval_every and done % rs.eval_every == 0 and not last:
                write_eval(done)
            if rs.checkpoint_every and done % rs.checkpoint_every == 0 and not last:
                save(done)
            if preempt.requested or managers[0].reached_preemption(done):
                if not last:
                    save(done)
                    preempted = True
                    log(f"preempted at step {done}: checkpoint saved, exiting")
                    break
        else:
            done = total
        if not preempted and not all(diverged):
            if done > start:
                save(done)
                write_eval(done)
            else:  # already at total_steps: keep the recorded result rather than saving again
                previous = [read_json(Path(d) / RESULT_FILE) for d in run_dirs]
                if all(previous):
                    eval_results = [p["eval"] for p in previous]
                else:
                    write_eval(done)
    finally:
        for m in managers:
            m.wait_until_finished()
        progress.close()
        preempt.restore()
        it.close()
    final_wall = time.time() - t_start
    n_nonfinite = np.atleast_1d(jax.device_get(state.n_nonfinite))
    results = []
    for i in range(n):
        logs[i].close()
        managers[i].close()
        r = RunResult(name=cfgs[i].run.name, run_dir=run_dirs[i], step=done, finished=not preempted,
                      preempted=preempted, diverged=diverged[i], stop_reason=reasons[i],
                      n_nonfinite=int(n_nonfinite[i]), wall_time_s=wall0[i] + final_wall,
                      eval=eval_results[i] if not diverged[i] else {})
        if r.finished and is_main:
            write_result(run_dirs[i], dataclasses.asdict(r))
        results.append(r)
    return results
