"""steer-eval outputs: steer_eval.json, steer_eval.md (tables, verdict, before/after completions)
and steer_eval.png (test behaviour shift against KL to the unsteered model, one curve per method)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _f(v: Any, fmt: str = "+.3f") -> str:
    return "—" if v is None else format(v, fmt)


def _short(text: str, n: int = 48) -> str:
    text = text.replace("\n", "↵").replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in result["methods"]:
        pts = sorted((p["kl"], p["test"]["mean_shift"]) for p in m["points"]
                     if p["strength"] is None or p["strength"] > 0)
        label = m["name"] + (f" #{m['feature']}" if "feature" in m else "")
        ax.plot([0.0] + [k for k, _ in pts], [0.0] + [b for _, b in pts], "o-" if len(pts) > 1 else "s",
                label=label, markersize=4)
    for b in result["settings"]["kl_budgets"]:
        ax.axvline(b, color="#bbb", lw=0.8, ls=":")
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("KL(unsteered ‖ steered) on the neutral text, nats (symlog)")
    ax.set_ylabel("test shift of log P(target) − log P(alt), nats")
    ax.set_title(f"{result['suite']['name']}: behaviour against cost (strengths > 0)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _method_table(result: dict[str, Any]) -> list[str]:
    budgets = [f"{b:g}" for b in result["settings"]["kl_budgets"]]
    lines = ["| method | s chosen on dev | KL | test shift | wrong way | kinds moved | pattern | ppl | "
             + " | ".join(f"shift @KL {b}" for b in budgets) + " |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(budgets)]
    for m in result["methods"]:
        # Prompting's one point has strength None, as has "no operating point": hence the flag.
        op = next((p for p in m["points"] if p["strength"] == m["chosen_strength"]), None) \
            if m.get("operating_point", True) else None
        name = m["name"] + (f" #{m['feature']}" if "feature" in m else "")
        mk = " | ".join(_f(m["matched_kl"][b]) for b in budgets)
        if op is None:
            lines.append(f"| {name} | none moves dev the right way within KL {result['settings']['select_kl']} "
                         f"| | | | | | | {mk} |")
            continue
        t = op["test"]
        lines.append(f"| {name} | {_f(op['strength'], 'g')} | {op['kl']:.3f} | {t['mean_shift']:+.3f} | "
                     f"{t['wrong_way']}/{t['n']} | {t['kinds_moved']}/{t['n_kinds']} | "
                     f"{_f(op['pattern_fraction'], '.2f')} | {_f(op['perplexity'], '.1f')} | {mk} |")
    return lines


def _sweep_table(m: dict[str, Any]) -> list[str]:
    lines = ["| s | KL | dev shift | test shift | test median | wrong way | kinds moved | pattern | ppl |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in m["points"]:
        t = p["test"]
        lines.append(f"| {_f(p['strength'], 'g')} | {p['kl']:.3f} | {p['dev']['mean_shift']:+.3f} | "
                     f"{t['mean_shift']:+.3f} | {t['median_shift']:+.3f} | {t['wrong_way']}/{t['n']} | "
                     f"{t['kinds_moved']}/{t['n_kinds']} | {_f(p['pattern_fraction'], '.2f')} | {_f(p['perplexity'], '.1f')} |")
    return lines


def markdown(result: dict[str, Any], png_name: str = "steer_eval.png", dashboard: str | None = None) -> str:
    s, sel, v = result["suite"], result["selection"], result["verdict"]
    feat = sel["feature"]
    link = f"[#{feat}]({dashboard}/features/feature_{feat:06d}.html)" if dashboard else f"#{feat}"
    concept = "a concept feature" if v["concept_feature"] else "word-level (not a concept feature)"
    out = [f"# steer-eval: {s['name']}", "", s["description"], "",
           f"SAE: {result['sae']['arch']} F={result['sae']['n_features']} at {result['sae']['hook']} "
           f"(step {result['sae']['step']}). Dev kinds (choices): {', '.join(s['dev_kinds'])}. Test kinds "
           f"(report): {', '.join(s['test_kinds'])}. {s['n_dev']} dev / {s['n_test']} test prompts.", "",
           "## Verdict", "", _verdict_line(v, sel, link, concept, len(s["test_kinds"])), "",
           "## Methods at their dev-chosen strength, and at matched KL (test split)", ""]
    out += _method_table(result)
    out += ["", f"![behaviour vs KL]({png_name})", "",
            "Shift: mean over test prompts of the change in log P(target) − log P(alternative) (nats). "
            "Wrong way: test prompts whose shift has the wrong sign. A kind moves when its mean shift has "
            "the right sign and more than half its prompts do. Pattern: fraction of greedy generations "
            "matching the prompt's pattern. ppl: perplexity of the steered continuation under the unsteered "
            "model. Matched KL: test shift interpolated on each method's shift-vs-KL curve (strengths > 0, "
            "through the origin); — where the method never reaches that KL.", "",
            "How methods are made comparable: at strength s every vector method adds a vector of norm s·r, "
            "r = max_i·‖W_dec,i‖ being what clamping the chosen feature i to 1× its max adds where it is silent. "
            "A clamp *sets* f_i := s·max_i, so where the feature already fires at f_i(x) it adds only "
            "(s·max_i − f_i(x))·W_dec,i (less than feature-add at the same s, or even a subtraction); "
            "feature-add adds s·max_i·W_dec,i everywhere. Because equal s is therefore not equal intervention, "
            "methods are compared at matched KL to the unsteered model on a neutral text, the same positions "
            "(every position after BOS) edited for every method. Strengths are chosen on dev kinds only.", "",
            "## Unsteered preference per prompt", "",
            "| line | split | kind | log P(target) − log P(alt) | prompt | target | alternative |", "|---|---|---|---|---|---|---|"]
    for p in result["unsteered"]["prompts"]:
        out.append(f"| {p['line']} | {p['split']} | {p['kind']} | {p['preference']:+.2f} | `{_short(p['prompt'])}` | "
                   f"`{_short(p['target'], 24)}` | `{_short(p['alternative'], 24)}` |")
    out += ["", "## Dev selection (feature candidates by dev AUROC, swept on dev)", "",
            "| feature | AUROC | mean diff | precision top |", "|---|---|---|---|"]
    for r in sel["ranking"][:10]:
        out.append(f"| {r['feature']} | {r['auroc']:.3f} | {r['mean_diff']:+.3f} | {r['precision_top']:.2f} |")
    out += ["", "## Every sweep point", ""]
    for m in result["methods"]:
        out += [f"### {m['name']}" + (f" #{m['feature']}" if "feature" in m else ""), ""] + _sweep_table(m) + [""]
    out += _before_after(result)
    return "\n".join(out) + "\n"


def _verdict_line(v: dict[str, Any], sel: dict[str, Any], link: str, concept: str, n_test_kinds: int) -> str:
    if "reason" in v:  # no operating point: say so rather than quote a strength nobody chose
        return (f"Feature {link}, the dev search's pick (its sweep is below): {v['reason']}. "
                f"**No steering feature found**; {concept}.")
    return (f"Feature {link}, chosen on dev at c = {_f(sel['strength'], 'g')}, moves {v['kinds_moved']} of "
            f"{n_test_kinds} test kinds the right way (needed: {v['kinds_needed']}) at KL "
            f"{_f(v.get('kl'), '.3f')} nat: **{concept}**.")


def _before_after(result: dict[str, Any]) -> list[str]:
    clamp = result["methods"][0]
    op = next((p for p in clamp["points"] if p["strength"] == clamp["chosen_strength"]), None)
    strongest = max((p for p in clamp["points"] if p["strength"] is not None), key=lambda p: p["strength"])
    test = [p for p in result["unsteered"]["prompts"] if p["split"] == "test"]
    cols = [("unsteered", result["unsteered"]["generations"])]
    if op is not None:
        cols.append((f"c = {op['strength']:g} (dev choice)", op["generations"]))
    if strongest is not op:
        cols.append((f"c = {strongest['strength']:g}", strongest["generations"]))
    lines = [f"## Before and after: feature #{clamp['feature']} clamped (greedy, test prompts)", "",
             "| kind | prompt | " + " | ".join(c for c, _ in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for i, p in enumerate(test):
        lines.append(f"| {p['kind']} | `{_short(p['prompt'], 40)}` | " + " | ".join(f"`{_short(g[i], 30)}`" for _, g in cols) + " |")
    return lines + [""]


def write_outputs(result: dict[str, Any], out: Path, dashboard: str | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "steer_eval.json", out / "steer_eval.md", out / "steer_eval.png"]
    paths[0].write_text(json.dumps(result, indent=1))
    plot(result, paths[2])
    paths[1].write_text(markdown(result, paths[2].name, dashboard), encoding="utf-8")
    return paths
