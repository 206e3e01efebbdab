"""The results table of a sweep: one row per finished run, in the columns of
`jaxdict.scaling.results_table.RESULT_COLUMNS` (what `jaxdict scaling fit` reads), written as CSV
(pandas.read_csv reads it). `flops` is the training compute C of jaxdict.scaling.compute (the dense
maths, whatever decoder ran); `epochs` how many times the run read its training split."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from jaxdict.atomic import write_text_atomic
from jaxdict.scaling.compute import training_compute
from jaxdict.scaling.results_table import RESULT_COLUMNS
from jaxdict.train.config import RunConfig
from jaxdict.train.epochs import run_epochs
from jaxdict.train.run_setup import CONFIG_FILE, RESULT_FILE

__all__ = ["RESULT_COLUMNS", "result_row", "step_compute", "write_results"]


def step_compute(cfg: RunConfig) -> float:
    """Training compute C of one step of `cfg` (jaxdict.scaling.compute): 10·B·d·F, whatever decoder ran."""
    return training_compute(cfg.sae.d_in, cfg.sae.n_features, cfg.data.batch_size)


def result_row(run_dir: str | Path, group_size: int = 1) -> dict | None:
    """The row of a finished run (None while it has no result.json)."""
    run_dir = Path(run_dir)
    if not (run_dir / RESULT_FILE).is_file():
        return None
    result = json.loads((run_dir / RESULT_FILE).read_text())
    cfg = RunConfig.from_dict(json.loads((run_dir / CONFIG_FILE).read_text()))
    ev = result.get("eval") or {}
    steps = int(result["step"])
    arch = cfg.sae.arch
    return {
        "name": cfg.run.name,
        "arch": arch,
        "n_features": cfg.sae.n_features,
        "k": cfg.sae.k if arch in ("topk", "batchtopk") else "",
        "l1_coeff": cfg.sae.l1_coeff if arch == "relu_l1" else "",
        "lr": cfg.optim.lr,
        "steps": steps,
        "batch_size": cfg.data.batch_size,
        "tokens": steps * cfg.data.batch_size,
        "flops": step_compute(cfg) * steps,
        "epochs": round(run_epochs(cfg, steps * cfg.data.batch_size), 6),
        "final_loss": ev.get("loss", ""),
        "fvu": ev.get("fvu", ""),
        "l0": ev.get("l0", ""),
        "dead_frac": ev.get("dead_frac", ""),
        "wall_time_s": round(float(result["wall_time_s"]), 3),
        "diverged": bool(result["diverged"]),
        "dense_frac": ev.get("dense_frac", ""),
        "l0_coeff": cfg.sae.l0_coeff if arch == "jumprelu" else "",
        "seed": cfg.run.seed,
        "group_size": group_size,
        "run_dir": str(run_dir),
    }


def write_results(path: str | Path, rows: list[dict]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=RESULT_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())
