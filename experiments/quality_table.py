"""Train, evaluate and tabulate every architecture at L0 ≈ 32 and ≈ 64 (experiments/results/quality.md).

    python experiments/quality_table.py --store /work/stores/gemma-l9/resid_post.9 --out runs/q \
        --rows jumprelu-32,topk-32,... --table experiments/results/quality.md

One row = one `jaxdict train` of experiments/quality.py:gemma plus the architecture's L0 knob, then
`jaxdict eval` on held-out documents. Rows whose folder holds result.json (and eval/eval.json) are
not trained (evaluated) again, so the script resumes. ReLU-L1 has no L0 knob: λ is searched (secant
steps on log λ against log L0, from λ = 1) until the held-out L0 lies within ±15 % of the target;
every try is a full run, the tries are pooled across targets, and the table reports them.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KNOBS = {"topk": "sae.k", "batchtopk": "sae.k", "jumprelu": "sae.target_l0"}
ROWS = ["jumprelu-32", "topk-32", "jumprelu-64", "topk-64", "batchtopk-32", "batchtopk-64",
        "relu_l1-32", "relu_l1-64"]
L0_TOLERANCE = 0.15


def jaxdict(*args: str, log: Path) -> None:
    env = dict(os.environ, PYTHONPATH=f"{HERE}:{HERE.parent}:{os.environ.get('PYTHONPATH', '')}")
    with open(log, "a") as f:
        subprocess.run([sys.executable, "-m", "jaxdict.cli", *args], check=True, stdout=f, stderr=subprocess.STDOUT,
                       env=env)


def train_and_eval(run: Path, sets: list[str], store: str, eval_tokens: int) -> dict:
    if not (run / "result.json").is_file():
        args = ["train", "--config", f"{HERE / 'quality.py'}:gemma", "--set", f"data.store={store}",
                "--out", str(run), "--no-progress"]
        for s in sets:
            args += ["--set", s]
        jaxdict(*args, log=run.with_suffix(".log"))
    if not (run / "eval" / "eval.json").is_file():
        jaxdict("eval", str(run), "--out", str(run / "eval"), "--tokens", str(eval_tokens), "--no-progress",
                log=run.with_suffix(".log"))
    return json.loads((run / "eval" / "eval.json").read_text())


def command_of(run: Path, store: str, sets: list[str]) -> str:
    extra = " ".join(f"--set {s}" for s in sets)
    return (f"jaxdict train --config experiments/quality.py:gemma --set data.store={store} {extra} --out {run}"
            f" && jaxdict eval {run} --out {run}/eval")


def finished_relu_l1_runs(out: Path) -> list[tuple[float, float, Path]]:
    """(λ, held-out L0, run) of every evaluated ReLU-L1 run under `out`, whatever target it was for."""
    points = []
    for run in sorted(out.glob("relu_l1-*-try*")):
        if (run / "eval" / "eval.json").is_file() and (run / "config.json").is_file():
            lam = float(json.loads((run / "config.json").read_text())["sae"]["l1_coeff"])
            points.append((lam, float(json.loads((run / "eval" / "eval.json").read_text())["l0"]), run))
    return points


def next_lambda(points: list[tuple[float, float, Path]], target: int) -> float:
    """λ for the next try: λ = 1 with nothing measured; from one point, L0 ∝ 1/λ; from more, the
    secant of log L0 against log λ through the two points nearest the target."""
    if not points:
        return 1.0
    near = sorted(points, key=lambda p: abs(math.log(p[1] / target)))
    if len(near) == 1 or near[0][0] == near[1][0] or near[0][1] == near[1][1]:
        return near[0][0] * near[0][1] / target
    (l1, a, _), (l2, b, _) = near[0], near[1]
    slope = (math.log(b) - math.log(a)) / (math.log(l2) - math.log(l1))
    return l1 * math.exp((math.log(target) - math.log(a)) / min(slope, -0.1))


def relu_l1_search(out: Path, target: int, store: str, eval_tokens: int, max_tries: int) -> tuple[Path, list]:
    """λ tries until the held-out L0 is within tolerance; returns the chosen run and every (λ, L0)
    the choice rested on. Runs are pooled across targets (λ = 1 serves L0 32 and 64 alike), so a
    search for one target starts from what the other already measured."""
    for i in range(max_tries):
        points = finished_relu_l1_runs(out)
        hits = [p for p in points if abs(p[1] / target - 1.0) <= L0_TOLERANCE]
        if hits:
            break
        lam = next_lambda(points, target)
        run = out / f"relu_l1-{target}-try{i}"
        while (run / "eval" / "eval.json").is_file():  # a name taken by an earlier search
            i += 100
            run = out / f"relu_l1-{target}-try{i}"
        train_and_eval(run, ["sae.arch=relu_l1", f"sae.l1_coeff={lam:.4g}"], store, eval_tokens)
    points = finished_relu_l1_runs(out)
    best = min(points, key=lambda t: abs(t[1] / target - 1.0))
    return best[2], [(t[0], t[1]) for t in sorted(points)]


def append_row(results: Path, record: dict) -> None:
    """Append one table row to the results file (JSON lines) and print its headline numbers."""
    with open(results, "a") as f:
        f.write(json.dumps(record) + "\n")
    ev = record["eval"]
    print(f"{record['row']}: l0 {ev.get('l0')} fvu {ev.get('fvu')} delta_ce {ev.get('delta_ce')}", flush=True)


def median_logged_rate(run: Path) -> float | None:
    """Median of the training log's tokens/s (one value per logging interval): unlike tokens / wall
    time it is not moved by a pause or a slow start; None when the run logs no rate (SAELens)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    rates = sorted(r["tokens_per_s"] for r in map(json.loads, path.read_text().splitlines())
                   if r.get("split") == "train" and "tokens_per_s" in r)
    return rates[len(rates) // 2] if rates else None


def render_rows(results: Path) -> str:
    """The markdown rows of quality.md from the results file (the last record of each row wins)."""
    records = {}
    for line in results.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            records[r["row"]] = r
    topk_fvu = {r["target_l0"]: r["eval"]["fvu"] for r in records.values() if r["arch"] == "topk"}
    lines = []
    for r in sorted(records.values(), key=lambda r: (r["target_l0"], r["arch"])):
        ev, target = r["eval"], r["target_l0"]
        l0 = f"{ev['l0']:.2f} ({100 * (ev['l0'] / target - 1):+.1f} %)"
        fvu = f"{ev['fvu']:.4f}"
        if r["arch"] != "topk" and target in topk_fvu:
            fvu += f" ({100 * (ev['fvu'] / topk_fvu[target] - 1):+.1f} % vs TopK)"
        tries = ""
        if r.get("l1_tries"):
            tries = "; λ tries (pooled over both targets): " + ", ".join(f"{lam:.3g}→{l0_:.0f}" for lam, l0_ in r["l1_tries"])
        median = median_logged_rate(Path(r["run"]))
        command = r["command"].replace(str(Path(r["run"]).parent), "runs/q")
        command = re.sub(r"(data\.store=|--store )\S+", r"\1STORE", command)
        lines.append(f"| {r['row']} | {l0} | {fvu} | {ev['delta_ce']:.4f} | {ev['kl']:.3f} | "
                     f"{100 * ev['dead_frac']:.1f} % | {100 * ev['dense_frac']:.2f} % | {r['tokens_per_s']:,.0f} | "
                     f"{'—' if median is None else f'{median:,.0f}'} | "
                     f"`{command}`{tries} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True, help="parent folder of the runs")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--eval-tokens", type=int, default=65536)
    p.add_argument("--max-tries", type=int, default=4, help="ReLU-L1 λ tries per target")
    p.add_argument("--results", default=None, help="JSON lines file the rows are appended to")
    p.add_argument("--render", action="store_true", help="print the table rows of --results and exit")
    args = p.parse_args(argv)
    if args.render:
        print(render_rows(Path(args.results or Path(args.out) / "quality_rows.jsonl")))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = Path(args.results or out / "quality_rows.jsonl")
    for row in args.rows.split(","):
        arch, target = row.rsplit("-", 1)
        target_l0 = int(target)
        tries = None
        if arch == "relu_l1":
            run, tries = relu_l1_search(out, target_l0, args.store, args.eval_tokens, args.max_tries)
            lam = json.loads((run / "config.json").read_text())["sae"]["l1_coeff"]
            sets = ["sae.arch=relu_l1", f"sae.l1_coeff={lam:.4g}"]
        else:
            sets = [f"sae.arch={arch}", f"{KNOBS[arch]}={target_l0}"]
            run = out / row
            train_and_eval(run, sets, args.store, args.eval_tokens)
        ev = json.loads((run / "eval" / "eval.json").read_text())
        result = json.loads((run / "result.json").read_text())
        config = json.loads((run / "config.json").read_text())
        tokens = config["optim"]["total_steps"] * config["data"]["batch_size"]
        record = {"row": row, "arch": arch, "target_l0": target_l0, "run": str(run), "tokens": tokens,
                  "tokens_per_s": tokens / result["wall_time_s"], "l1_tries": tries, "eval": ev,
                  "command": command_of(run, args.store, sets)}
        append_row(results, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
