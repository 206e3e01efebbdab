"""The CLT beside per-layer transcoders (issue 17 item 6): renders the markdown tables of
experiments/results/clt.md from two `jaxdict eval` outputs (eval.json of a CLT run and of the same
run at decoder_span 1) and the runs' metrics.jsonl.

    python experiments/clt_report.py --clt RUN_CLT --plt RUN_PLT   (each RUN has eval/eval.json)
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ROWS = (  # (key in eval.json, label, format)
    ("fvu", "held-out fvu of mlp_out (mean over the 18 layers)", "{:.4f}"),
    ("l0", "L0 per layer (active features per token)", "{:.2f}"),
    ("dead_frac", "features that never fire on the held-out rows", "{:.1%}"),
    ("dense_frac", "features firing on > 10 % of held-out rows", "{:.1%}"),
    ("delta_ce", "delta_ce, every MLP replaced, no error terms (nats)", "{:.3f}"),
    ("ce_recovered", "ce_recovered (all MLPs zeroed = 0)", "{:.3f}"),
    ("kl", "kl, no error terms", "{:.3f}"),
    ("delta_ce_with_errors", "delta_ce with error terms (plumbing check, ≈ 0)", "{:.2g}"),
    ("kl_with_errors", "kl with error terms (≈ 0)", "{:.2g}"),
    ("decoder_share_beyond_overall", "decoder mass beyond l' = l", "{:.1%}"),
    ("ce_clean", "clean CE (nats)", "{:.3f}"),
    ("ce_zero_ablation", "CE with every MLP output zeroed", "{:.3f}"),
)


def load(run: Path) -> dict:
    result = json.loads((run / "eval" / "eval.json").read_text())
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [m for m in logged if m.get("split") == "train"]
    rates = [m["tokens_per_s"] for m in train[1:] if "tokens_per_s" in m]  # the first includes the compile
    result["train_tokens"] = train[-1]["tokens"] if train else 0
    result["train_tokens_per_s_median"] = statistics.median(rates) if rates else float("nan")
    result["train_wall_s"] = train[-1].get("wall_time_s") if train else float("nan")
    return result


def render(clt: dict, plt: dict) -> str:
    lines = ["| | CLT (every l' ≥ l) | per-layer transcoders (decoder_span 1) |", "|---|---|---|"]
    for key, label, fmt in ROWS:
        if key in clt and key in plt:
            lines.append(f"| {label} | {fmt.format(clt[key])} | {fmt.format(plt[key])} |")
    lines.append(f"| training tokens | {clt['train_tokens']:,} | {plt['train_tokens']:,} |")
    lines.append(f"| training tokens/s (median logged, contended) | {clt['train_tokens_per_s_median']:.0f} | "
                 f"{plt['train_tokens_per_s_median']:.0f} |")
    lines.append(f"| held-out rows / text tokens | {clt['n_tokens']:,} / {clt.get('n_text_tokens', 0):,} | "
                 f"{plt['n_tokens']:,} / {plt.get('n_text_tokens', 0):,} |")
    lines += ["", "| layer | fvu CLT | fvu PLT | L0 CLT | L0 PLT | dead CLT | dead PLT | CLT mass beyond l' = l |",
              "|---|---|---|---|---|---|---|---|"]
    for layer in range(len(clt["fvu_per_layer"])):
        lines.append(
            f"| {layer} | {clt['fvu_per_layer'][layer]:.4f} | {plt['fvu_per_layer'][layer]:.4f} | "
            f"{clt['l0_per_layer'][layer]:.1f} | {plt['l0_per_layer'][layer]:.1f} | "
            f"{clt['dead_frac_per_layer'][layer]:.1%} | {plt['dead_frac_per_layer'][layer]:.1%} | "
            f"{clt['decoder_share_beyond'][layer]:.1%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clt", type=Path, required=True, help="the CLT run folder (with eval/eval.json)")
    p.add_argument("--plt", type=Path, required=True, help="the decoder_span 1 run folder (with eval/eval.json)")
    args = p.parse_args(argv)
    print(render(load(args.clt), load(args.plt)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
