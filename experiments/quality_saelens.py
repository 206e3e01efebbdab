"""SAELens's own TopK SAE on the quality table's rows (experiments/results/quality.md).

    python experiments/quality_saelens.py --store /work/stores/gemma-l9/resid_post.9 --out runs/q \
        --rows saelens_topk-32,saelens_topk-64 --results runs/q/rows.jsonl

Each row trains `sae_lens.TopKTrainingSAE` with `SAETrainer.fit` (SAELens's trainer, optimiser and
AuxK) on the batches jaxdict's loader yields for experiments/quality.py:gemma (same store rows, same
order, inputs × the same scale to E‖x‖² = d_in), with that config's F, batch, steps, lr, decay
schedule (linear to 0 over the last 20 %) and dead window: the training code is
jaxdict/bench/train_vs_saelens.py's `train_saelens`, the one `jaxdict bench train --saelens` runs.
The trained SAE is written as a SAELens folder (raw units) and scored by the same `jaxdict eval`
as every other row, so fvu, delta_ce, kl, dead_frac and dense_frac come from one function.
tokens/s = training tokens / wall time of SAELens's set-up and `fit`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]


def train_row(store: str, k: int, run: Path) -> float:
    """Train SAELens's TopK at k on quality.py:gemma's rows; write `run` as a SAELens folder and
    return the wall seconds of the training."""
    import dataclasses

    from quality import GEMMA

    from jaxdict.bench.train_vs_saelens import WholeRun, train_saelens
    from jaxdict.sae.inference import SAE
    from jaxdict.sae.io import export_saelens
    from jaxdict.train.run_setup import open_sources

    cfg = dataclasses.replace(GEMMA, sae=dataclasses.replace(GEMMA.sae, arch="topk", k=k, l1_coeff=0.0),
                              data=dataclasses.replace(GEMMA.data, store=store))
    batch = cfg.data.batch_size
    if cfg.optim.lr_warmup_steps or cfg.optim.lr_decay_frac != 0.2:
        raise SystemExit("quality.py:gemma's schedule is no longer SAETrainer's (no warm-up, last 20 % decay): "
                         "update train_saelens before comparing")
    spec = WholeRun(store=store, n_features=cfg.sae.n_features, k=k, batch_size=batch,
                    steps=cfg.optim.total_steps, lr=cfg.optim.lr,
                    dead_steps=max(1, cfg.sae.dead_tokens // batch), out_dir=str(run))
    params, wall = train_saelens(spec, cfg, open_sources(cfg))
    sae_cfg = dataclasses.replace(cfg.sae, arch="topk")
    export_saelens(SAE(cfg=sae_cfg, params=params, model=cfg.data.model, hook=cfg.data.hook), run)
    (run / "train.json").write_text(json.dumps({"wall_time_s": wall, "spec": dataclasses.asdict(spec)}, indent=1))
    return wall


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True, help="parent folder of the runs")
    p.add_argument("--rows", default="saelens_topk-32,saelens_topk-64")
    p.add_argument("--eval-tokens", type=int, default=65536)
    p.add_argument("--results", default=None, help="JSON lines file the rows are appended to")
    args = p.parse_args(argv)
    from quality_table import append_row, jaxdict

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = Path(args.results or out / "quality_rows.jsonl")
    for row in args.rows.split(","):
        name, k = row.rsplit("-", 1)
        if name != "saelens_topk":
            raise SystemExit(f"row {row!r}: this script trains saelens_topk-K rows only")
        run = out / row
        if not (run / "train.json").is_file():
            train_row(args.store, int(k), run)
        if not (run / "eval" / "eval.json").is_file():
            # The same held-out documents as the jaxdict rows: a SAELens folder records no split.
            from quality import GEMMA

            jaxdict("eval", str(run), "--store", args.store, "--eval-fraction", str(GEMMA.data.eval_fraction),
                    "--out", str(run / "eval"), "--tokens", str(args.eval_tokens), "--no-progress",
                    log=run.with_suffix(".log"))
        ev = json.loads((run / "eval" / "eval.json").read_text())
        train = json.loads((run / "train.json").read_text())
        tokens = train["spec"]["steps"] * train["spec"]["batch_size"]
        record = {"row": row, "arch": "saelens_topk", "target_l0": int(k), "run": str(run), "tokens": tokens,
                  "tokens_per_s": tokens / train["wall_time_s"], "l1_tries": None, "eval": ev,
                  "command": f"python experiments/quality_saelens.py --store {args.store} --out {out} --rows {row}"}
        append_row(results, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
