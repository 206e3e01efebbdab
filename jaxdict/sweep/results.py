"""The results table of a sweep: one row per finished run, in the columns `jaxdict scaling fit`
reads (jaxdict/scaling/results_table.py), written as CSV (pandas.read_csv reads it)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from jaxdict.train.config import RunConfig
from jaxdict.train.run_setup import CONFIG_FILE, RESULT_FILE

RESULT_COLUMNS = (
    "name", "arch", "n_features", "k", "l1_coeff", "lr", "steps", "batch_size", "tokens", "flops",
    "final_loss", "fvu", "l0", "dead_frac", "wall_time_s", "diverged",
    # extra columns (the fitter ignores them)
    "dense_frac", "l0_coeff", "seed", "group_size", "run_dir",
)


def step_flops(cfg: RunConfig) -> float:
    """FLOPs of one train step (DESIGN.md §7): ~10·B·d·F dense (decoder bias folded into the
    encoder bias); 2·B·d·F + 8·B·k·d for TopK whose decoder and encoder backward touch only the
    k active latents."""
    b, d, f = cfg.data.batch_size, cfg.sae.d_in, cfg.sae.n_features
    if cfg.sae.uses_sparse_decode:
        return 2.0 * b * d * f + 8.0 * b * cfg.sae.k * d
    return 10.0 * b * d * f


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
        "flops": step_flops(cfg) * steps,
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
    path = Path(path)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    os.replace(tmp, path)
