"""The quickstart end to end in a tiny configuration: every output exists and parses; a re-run reuses."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from jaxdict.quickstart import QuickstartConfig, QuickstartError, check_resources

REPO = Path(__file__).resolve().parents[1]


def small_corpus(folder: Path) -> Path:
    """60 short documents of real text (the standard library's own source), so a 5000-token
    harvest still has enough documents for a held-out split."""
    folder.mkdir()
    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:60]
    for i, src in enumerate(sources):
        (folder / f"doc{i:03d}.txt").write_text(src.read_text(errors="ignore")[:1500])
    return folder


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env_flags = "--xla_force_host_platform_device_count=1"
    return subprocess.run([sys.executable, "-m", "jaxdict.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env={**__import__("os").environ, "XLA_FLAGS": env_flags})


@pytest.mark.slow
def test_quickstart_tiny_end_to_end(tmp_path):
    corpus = small_corpus(tmp_path / "corpus")
    out = tmp_path / "qs"
    args = ["quickstart", "--out", str(out), "--corpus", str(corpus), "--eval-fraction", "0.3",
            "--tokens", "5000", "--features", "256", "--k", "8", "--steps", "20", "--batch-size", "128",
            "--eval-tokens", "1000", "--text-tokens", "256", "--feature-tokens", "2000", "--pages", "4",
            "--max-new-tokens", "3", "--no-progress"]
    first = run_cli(args, tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    outputs = summary["outputs"]
    for key in ("store", "checkpoint", "metrics_log", "eval", "density_plot", "dashboard", "steering"):
        assert Path(outputs[key]).exists(), key
    assert Path(outputs["density_plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<html" in Path(outputs["dashboard"]).read_text().lower()
    assert "<html" in Path(outputs["steering"]).read_text().lower()
    evaluation = json.loads(Path(outputs["eval"]).read_text())
    metrics = summary["metrics"]
    # The summary carries every metric of eval.json it names, with eval.json's value, and prints it.
    for name in ("fvu", "l0", "delta_ce", "kl", "ce_recovered", "ce_clean", "ce_sae", "ce_zero_ablation"):
        assert np.isfinite(metrics[name]) and metrics[name] == evaluation[name], name
        assert re.search(rf"^  {name} +\S", first.stdout, re.M), name
    assert metrics["l0"] <= 8 + 1e-6
    logged = [json.loads(line) for line in Path(outputs["metrics_log"]).read_text().splitlines()]
    train_rows = [row for row in logged if row["split"] == "train"]
    assert train_rows[-1]["step"] == 20 and np.isfinite(train_rows[-1]["fvu"])  # trained all --steps
    steer = json.loads((out / "steer" / "steer.json").read_text())
    steered = summary["steered_feature"]["steered"]
    assert [row["kl"] for row in steered] == [row["kl"] for row in steer[0]["steered"]]
    assert all(np.isfinite(row["kl"]) and row["kl"] >= 0 for row in steered)
    assert "=== jaxdict quickstart: summary ===" in first.stdout

    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("harvest", "train", "eval", "features", "steer"):
        assert f"[{stage}] already done: reusing it" in again.stdout


def test_quickstart_refuses_a_machine_without_enough_disk(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(QuickstartError, match=r"not enough disk under .*: 0.0 GiB free, the quickstart needs about"):
        check_resources(QuickstartConfig(out=str(tmp_path / "qs")))


def test_quickstart_memory_check_counts_reclaimable_page_cache(tmp_path, monkeypatch):
    import jaxdict.quickstart as quickstart

    meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024
               for line in Path("/proc/meminfo").read_text().splitlines()}
    # MemAvailable (free + reclaimable cache), not MemFree: CI refused a run with 3.4 GiB "free"
    # after the install had filled the page cache.
    assert quickstart.available_memory_bytes() >= meminfo["MemFree"] - 256 * 2**20
    monkeypatch.setattr(quickstart, "available_memory_bytes", lambda: 3 * 2**30)
    with pytest.raises(QuickstartError, match=r"not enough free memory: 3.0 GiB available, the quickstart needs about 4"):
        check_resources(QuickstartConfig(out=str(tmp_path / "qs")))
