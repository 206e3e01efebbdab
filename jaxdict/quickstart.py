"""The whole pipeline on the embedded default, end to end, resumable stage by stage.

harvest (Gemma 3 270M, Python stdlib corpus) → train a TopK SAE → eval (fvu, l0, delta_ce, …) →
feature dashboard → one steering example → summary. Each stage runs the same code as its
sub-command (`jaxdict harvest|train|eval|features|steer`) and is skipped when its output already
exists, so re-running the quickstart reuses what is done.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable


GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
    out: str = "runs/quickstart"
    model: str = "gemma3-270m"
    layer: int = 9  # the middle of Gemma 3 270M's 18 blocks
    tokens: int = 300_000  # harvested rows
    corpus: str = "default"  # the Python standard library's source; or a file/folder/JSONL/Parquet
    eval_fraction: float = 0.05  # documents held out (the stdlib corpus has ~220 in 1M tokens)
    context: int = 128
    features: int = 4096
    k: int = 32
    steps: int = 1000
    batch_size: int = 1024
    lr: float = 5e-4
    eval_tokens: int = 50_000
    text_tokens: int = 2048  # tokens of held-out text run through the LM with the SAE spliced in
    feature_tokens: int = 100_000
    pages: int = 60
    prompt: str = "The Golden Gate Bridge is located in"
    # c × max activation; c = 0 ablates, 1–3 amplify visibly, ≥ 5 tends to degenerate text.
    strengths: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    max_new_tokens: int = 24

    @property
    def hook(self) -> str:
        return f"resid_post.{self.layer}"

    def paths(self) -> dict[str, Path]:
        root = Path(self.out)
        return {"root": root, "stores": root / "stores", "store": root / "stores" / self.hook,
                "run": root / "sae", "eval": root / "eval", "features": root / "features",
                "steer": root / "steer", "summary": root / "summary.json"}


class QuickstartError(RuntimeError):
    pass


def available_memory_bytes() -> int | None:
    """Memory a new process can take: Linux's MemAvailable, which counts reclaimable page cache.
    (sysconf's AVPHYS_PAGES is MemFree: on a machine that just wrote a store or installed packages
    most memory sits in page cache, and MemFree refused runs that had 20 GiB to spare.)"""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def check_resources(cfg: QuickstartConfig) -> dict[str, float]:
    """Refuse, before any work, a machine without the disk or memory the run needs."""
    root = Path(cfg.out)
    probe = root if root.exists() else next(p for p in [root, *root.parents] if p.exists())
    # float32 rows + token/doc/position columns, with room for zarr overheads; the dequantised
    # weight cache (~1.1 GB float32 for the 270M model) and the GGUF (~0.25 GB).
    need_disk = cfg.tokens * (4 * 640 + 16) * 1.15 + 1.6 * GIB
    free_disk = shutil.disk_usage(probe).free
    if free_disk < need_disk:
        raise QuickstartError(
            f"not enough disk under {probe}: {free_disk / GIB:.1f} GiB free, the quickstart needs about "
            f"{need_disk / GIB:.1f} GiB (lower --tokens or choose another --out)")
    need_mem = 4.0 * GIB  # the LM in float32 (~1.1 GB) plus XLA buffers for a [32, 128] forward pass
    avail = available_memory_bytes()
    if avail is not None and avail < need_mem:
        raise QuickstartError(f"not enough free memory: {avail / GIB:.1f} GiB available, the quickstart "
                              f"needs about {need_mem / GIB:.0f} GiB")
    return {"free_disk_gib": free_disk / GIB, "need_disk_gib": need_disk / GIB}


def _call(argv: list[str]) -> None:
    from jaxdict.cli import main

    print(f"\n$ jaxdict {' '.join(argv)}", flush=True)
    code = main(argv)
    if code:
        raise QuickstartError(f"`jaxdict {' '.join(argv)}` exited with code {code}")


def train_config(cfg: QuickstartConfig, store: Path) -> dict[str, Any]:
    """The TopK run as a resolved-config JSON (what `jaxdict train --config X.json` reads)."""
    from jaxdict.sae.config import SAEConfig
    from jaxdict.train.config import DataConfig, RunConfig, RunSettings
    from jaxdict.train.optim import OptimConfig

    run = RunConfig(
        # TopK (Gao et al. 2024) with AuxK; dead = no firing for 10 % of the training tokens here,
        # since the 10M-token window of the paper is longer than this whole run.
        sae=SAEConfig(arch="topk", d_in=640, n_features=cfg.features, k=cfg.k,
                      dead_tokens=max(1, cfg.steps * cfg.batch_size // 10)),
        optim=OptimConfig(lr=cfg.lr, total_steps=cfg.steps),
        data=DataConfig(source="store", store=str(store), model=cfg.model, hook=cfg.hook,
                        batch_size=cfg.batch_size, eval_fraction=cfg.eval_fraction, eval_rows=8192),
        run=RunSettings(name="quickstart-topk", log_every=50, checkpoint_every=max(cfg.steps // 4, 1)),
    )
    return run.to_dict()


def _stage(name: str, done: Callable[[], bool], work: Callable[[], None], timings: dict[str, float],
           timings_file: Path) -> None:
    """Run a stage unless its output exists; its wall time is kept in `timings_file`, so a re-run
    reports the time the stage took when it actually ran."""
    if done():
        print(f"[{name}] already done: reusing it", flush=True)
        return
    start = time.perf_counter()
    print(f"\n[{name}]", flush=True)
    work()
    timings[name] = time.perf_counter() - start
    timings_file.write_text(json.dumps(timings, indent=1))


def pick_steering_feature(features_dir: Path) -> dict[str, Any]:
    """A feature worth steering on the prompt: one that fires on the prompt (so c = 0 is a real
    ablation) yet on only 0.05 %–5 % of corpus tokens (specific, not dense), the one most active
    on the prompt relative to its maximum. Falls back to the strongest such feature overall."""
    import numpy as np

    stats = np.load(features_dir / "feature_stats.npz")
    density, max_act = stats["density"], stats["max_act"]

    def specific(i: int) -> bool:
        return 5e-4 <= float(density[i]) <= 5e-2

    search = features_dir / "search.json"
    if search.exists():
        hits = [f for result in json.loads(search.read_text()) for f in result["features"]
                if specific(int(f["feature"])) and f["max"] > 0]
        if hits:
            best = max(hits, key=lambda f: f["frac_of_max"])
            i = int(best["feature"])
            return {"feature": i, "max_act": float(max_act[i]), "density": float(density[i]),
                    "why": f"active on the prompt at {best['frac_of_max']:.0%} of its maximum"}
    candidates = [i for i in range(len(density)) if specific(i)] or list(range(len(density)))
    i = max(candidates, key=lambda j: float(max_act[j]))
    return {"feature": int(i), "max_act": float(max_act[i]), "density": float(density[i]),
            "why": "largest maximum activation among features firing on 0.05–5 % of tokens"}


def run_quickstart(cfg: QuickstartConfig, progress: bool = True) -> dict[str, Any]:
    resources = check_resources(cfg)
    p = cfg.paths()
    p["root"].mkdir(parents=True, exist_ok=True)
    timings_file = p["root"] / "stage_seconds.json"
    timings: dict[str, float] = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    quiet = [] if progress else ["--no-progress"]
    started = time.perf_counter()

    def store_done() -> bool:
        try:
            from jaxdict.store import open_store

            return open_store(str(p["store"])).n_rows >= cfg.tokens
        except Exception:
            return False

    _stage("harvest", store_done, lambda: _call(
        ["harvest", "--model", cfg.model, "--hook", cfg.hook, "--tokens", str(cfg.tokens),
         "--context", str(cfg.context), "--corpus", cfg.corpus, "--out", str(p["stores"]), *quiet]), timings, timings_file)

    config_path = p["root"] / "train_config.json"
    config_path.write_text(json.dumps(train_config(cfg, p["store"]), indent=1))

    def trained() -> bool:
        from jaxdict.train.checkpoint import latest_step

        try:
            return (latest_step(str(p["run"])) or 0) >= cfg.steps
        except Exception:
            return False

    _stage("train", trained, lambda: _call(
        ["train", "--config", str(config_path), "--out", str(p["run"])]), timings, timings_file)
    _stage("eval", lambda: (p["eval"] / "eval.json").exists(), lambda: _call(
        ["eval", str(p["run"]), "--out", str(p["eval"]), "--tokens", str(cfg.eval_tokens),
         "--text-tokens", str(cfg.text_tokens), "--eval-fraction", str(cfg.eval_fraction), *quiet]), timings, timings_file)
    _stage("features", lambda: (p["features"] / "features.json").exists(), lambda: _call(
        ["features", str(p["run"]), "--out", str(p["features"]), "--tokens", str(cfg.feature_tokens),
         "--pages", str(cfg.pages), "--search", cfg.prompt, *quiet]), timings, timings_file)
    feature = pick_steering_feature(p["features"])
    _stage("steer", lambda: (p["steer"] / "steer.json").exists(), lambda: _call(
        ["steer", str(p["run"]), "--out", str(p["steer"]), "--feature", str(feature["feature"]),
         "--strength", *[str(s) for s in cfg.strengths], "--prompt", cfg.prompt,
         "--max-new-tokens", str(cfg.max_new_tokens),
         "--max-activations", str(p["features"] / "max_activations.npy")]), timings, timings_file)

    eval_result = json.loads((p["eval"] / "eval.json").read_text())
    summary = {
        "config": dataclasses.asdict(cfg),
        "resources": resources,
        "stage_seconds": timings,
        "total_seconds": sum(timings.values()),
        "this_invocation_seconds": time.perf_counter() - started,
        "metrics": _flat_metrics(eval_result),
        "steered_feature": feature | _steering_outcome(p["steer"] / "steer.json"),
        "outputs": {
            "store": str(p["store"]), "checkpoint": str(p["run"] / "checkpoints"),
            "metrics_log": str(p["run"] / "metrics.jsonl"), "eval": str(p["eval"] / "eval.json"),
            "density_plot": str(p["eval"] / "density.png"), "dashboard": str(p["features"] / "index.html"),
            "steering": str(p["steer"] / "steer.html"),
        },
    }
    p["summary"].write_text(json.dumps(summary, indent=1))
    print_summary(summary)
    return summary


def _steering_outcome(steer_json: Path) -> dict[str, Any]:
    """Baseline and steered continuations with their KL, from `jaxdict steer`'s JSON."""
    result = json.loads(steer_json.read_text())[0]
    return {
        "promotes": result.get("promoted_tokens", [])[:8],
        "baseline": result["baseline"]["text"],
        "steered": [{k: row.get(k) for k in ("strength", "text", "kl", "dlogp_promoted")
                     if k in row} for row in result["steered"]],
    }


def _flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    wanted = ("fvu", "explained_variance", "l0", "dead_frac", "dense_frac", "delta_ce", "ce_recovered", "kl",
              "ce_clean", "ce_sae", "ce_zero_ablation")
    found: dict[str, float] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in wanted and isinstance(value, (int, float)) and key not in found:
                    found[key] = float(value)
                else:
                    walk(value)

    walk(result)
    return found


def print_summary(summary: dict[str, Any]) -> None:
    print("\n=== jaxdict quickstart: summary ===")
    for key, value in summary["metrics"].items():
        print(f"  {key:20s} {value:.4g}")
    f = summary["steered_feature"]
    print(f"  steered feature      #{f['feature']} (max act {f['max_act']:.3g}, density {f['density']:.2g}; "
          f"{f['why']}; promotes {' '.join(repr(t) for t in f['promotes'][:5])})")
    print(f"    baseline           {f['baseline'][:70]!r}")
    for row in f["steered"]:
        kl = row.get("kl") if isinstance(row.get("kl"), (int, float)) else None
        kl_text = f"KL {kl:.3g}" if kl is not None else ""
        print(f"    c = {row['strength']:<5g} {kl_text:10s} {row['text'][:70]!r}")
    print("  stage times (s)      " + ", ".join(f"{k} {v:.0f}" for k, v in summary["stage_seconds"].items())
          + f"; total {summary['total_seconds']:.0f} (this invocation {summary['this_invocation_seconds']:.0f})")
    print("outputs:")
    for key, value in summary["outputs"].items():
        print(f"  {key:14s} {value}")


__all__ = ["QuickstartConfig", "QuickstartError", "run_quickstart", "check_resources"]
