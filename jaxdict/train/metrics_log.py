"""Where metrics go: `<run_dir>/metrics.jsonl` (one JSON object per logged step), TensorBoard event
files under `<run_dir>/tb/` (tensorboardX), and a tqdm progress bar. Only process 0 writes.

Records carry `step` and `split` ("train" or "eval"); values are plain floats. On resume, records
after the restored step (written by the interrupted run after its last checkpoint) are dropped so
the file reads as one uninterrupted run.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable ("nan", "inf")
    return value


def read_metrics(run_dir: str | Path, split: str | None = None) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if split is None or rec.get("split") == split:
                records.append(rec)
    return records


class MetricsLog:
    """JSONL + TensorBoard writer of one run. `enabled=False` (processes other than 0) is a no-op."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._tb = None
        if not enabled:
            return
        kept = [r for r in read_metrics(run_dir) if int(r.get("step", 0)) <= resume_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w") as fh:
            for rec in kept:
                fh.write(json.dumps(rec) + "\n")
        self._fh = self.path.open("a")
        from tensorboardX import SummaryWriter  # imported lazily: only process 0 writes events

        self._tb = SummaryWriter(str(Path(run_dir) / TB_DIR), purge_step=resume_step + 1 if resume_step else None)

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        rec = {"step": int(step), "split": split, **{k: _plain(v) for k, v in metrics.items()}}
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()
        for key, value in rec.items():
            if key in ("step", "split") or not isinstance(value, (int, float)):
                continue
            self._tb.add_scalar(f"{split}/{key}", float(value), global_step=int(step))

    def close(self) -> None:
        if self.enabled:
            self._fh.close()
            self._tb.close()


class Progress:
    """A tqdm bar over optimiser steps with tokens/s and the latest logged metrics."""

    SHOWN = ("loss", "fvu", "l0", "dead_frac")

    def __init__(self, total: int, initial: int, tokens_per_step: int, enabled: bool, desc: str):
        self.tokens_per_step = tokens_per_step
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)

    def update(self, n_steps: int, metrics: dict[str, Any] | None, tokens_per_s: float) -> None:
        if self._bar is None:
            return
        if metrics is not None:
            shown = {k: f"{float(metrics[k]):.4g}" for k in self.SHOWN if k in metrics}
            self._bar.set_postfix(tok_s=f"{tokens_per_s:.3g}", **shown, refresh=False)
        self._bar.update(n_steps)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
