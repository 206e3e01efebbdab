"""Render the dictionary of `fit_sweep` (the content of fit.json) as a Markdown report."""
from __future__ import annotations

from pathlib import Path
from typing import Any

_LAW_TITLES = {
    "loss": "loss L(C)",
    "n_features": "dictionary size F*(C)",
    "steps": "training steps S*(C)",
    "tokens": "training tokens D*(C)",
    "lr": "learning rate lr*(C)",
}


def _g(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}g}"


def _with_ci(value: float, ci: list[float] | tuple[float, float] | None) -> str:
    if ci is None:
        return _g(value)
    return f"{_g(value)} [{_g(ci[0])}, {_g(ci[1])}]"


def _laws_table(result: dict[str, Any]) -> list[str]:
    lines = [
        "| law | fitted formula | a | exponent b | c | points | rms log residual |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, title in _LAW_TITLES.items():
        law = result["fits"].get(key)
        if law is None:
            continue
        c = _with_ci(law["c"], law["ci"]["c"]) if "c" in law else "–"
        lines.append(
            f"| {title} | `{law['fitted']}` | {_with_ci(law['a'], law['ci']['a'])} | "
            f"{_with_ci(law['b'], law['ci']['b'])} | {c} | {law['n_points']} | {_g(law['rms_log_residual'], 3)} |"
        )
    return lines


def _extrapolation_section(result: dict[str, Any]) -> list[str]:
    ext = result["extrapolation"]
    if ext is None:
        return ["No extrapolation check was run (`--holdout-top 0`)."]
    h = ext["holdout_top"]
    lines = [
        f"L(C) refitted on the frontier without its {h} largest-compute run(s), "
        f"then used to predict them: `{ext['fit']['fitted']}` ({ext['fit']['n_points']} points).",
        "",
        "| held-out run | C | measured | predicted [95% CI] | abs error (pred − meas) | rel error |",
        "|---|---|---|---|---|---|",
    ]
    inside = []
    for p in ext["points"]:
        ci = p["predicted_ci"]
        lines.append(
            f"| {p['name']} | {_g(p['compute'])} | {_g(p['measured'])} | {_with_ci(p['predicted'], ci)} | "
            f"{p['abs_error']:+.4g} | {100.0 * p['rel_error']:+.2f} % |"
        )
        if ci is not None:
            inside.append(ci[0] <= p["measured"] <= ci[1])
    worst = max(abs(p["rel_error"]) for p in ext["points"])
    lines.append("")
    summary = f"Largest relative error: {100.0 * worst:.2f} %."
    if inside:
        summary += (f" {sum(inside)} of {len(inside)} measured value(s) fall inside the bootstrap interval "
                    "of the prediction.")
    lines.append(summary)
    return lines


def _epochs_line(result: dict[str, Any]) -> str:
    repeated = result.get("repeated_data") or []
    if repeated:
        worst = max(r["epochs"] for r in repeated)
        return (f"- **data repeated**: {len(repeated)} used run(s) read their training split more than once "
                f"(up to {worst:.3g} epochs: {', '.join(r['name'] for r in repeated)}); the fits treat every "
                "token as fresh")
    if not result.get("epochs_recorded", False):
        return "- epochs: not recorded in the table (written by jaxdict sweep since the `epochs` column)"
    most = max((r["epochs"] for r in result["runs"]), default=0.0)
    return f"- epochs: every used run reads its training split at most once (largest {most:.3g})"


def _header_lines(result: dict[str, Any]) -> list[str]:
    """The bullet list under the title: table, metric, compute, runs, data, filters, intervals."""
    boot = result["bootstrap"]
    frontier = result["frontier"]
    lines = [
        f"- results table: `{result['source']}`",
        f"- loss L: `{result['metric']}`",
        f"- compute C: {result['compute_label']}",
        f"- runs: {result['n_runs']} in the table, {result['n_included']} used, "
        f"{len(result['excluded'])} excluded; {len(frontier)} on the compute-optimal frontier "
        f"(C from {_g(frontier[0]['compute'])} to {_g(frontier[-1]['compute'])})",
        _epochs_line(result),
    ]
    if result["where"]:
        lines.append(
            f"- filter: {', '.join(f'{k}={v}' for k, v in result['where'].items())} "
            f"({result['n_filtered_out']} rows of the table left out)"
        )
    for field, values in result["mixed_settings"].items():
        lines.append(
            f"- **note**: the used runs mix {field} values {', '.join(v or '(empty)' for v in values)}; "
            f"the frontier takes the best of them at each compute (fit one with `--where {field}=...`)"
        )
    if boot["n_resamples"]:
        lines.append(
            f"- intervals: {int(100 * boot['ci_level'])} % bootstrap percentile intervals from "
            f"{boot['n_resamples']} resamples of the frontier runs (seed {boot['seed']}); "
            f"{boot['n_rejected_draws']} draws with fewer than {boot['min_distinct_compute']} distinct "
            "compute values were redrawn"
        )
    else:
        lines.append("- intervals: none (`--bootstrap 0`)")
    return lines


def render_report(result: dict[str, Any]) -> str:
    """Markdown text of the report for one `fit_sweep` result."""
    frontier = result["frontier"]
    lines = ["# Scaling-law fit", "", *_header_lines(result)]
    lines += [
        "",
        "## Fitted laws",
        "",
        "Fitted on the frontier runs by least squares on log y. The exponent of L(C) is b in "
        "L = a·C^(−b) + c (c is the irreducible loss, kept in [0, min L)); the others are y = a·C^b.",
        "",
        *_laws_table(result),
        "",
    ]
    for key, title in _LAW_TITLES.items():
        law = result["fits"].get(key)
        if law is not None and law["n_bootstrap_nonfinite"]:
            lines += [f"{law['n_bootstrap_nonfinite']} bootstrap refit(s) of {title} gave non-finite "
                      "parameters and are left out of its intervals.", ""]
    if result["fits"].get("lr") is None:
        lines += [f"lr*(C) is not fitted: every used run has the same learning rate "
                  f"({', '.join(_g(v) for v in result['lr_values'])}).", ""]
    lines += [
        "The fits describe the compute range of the sweep; beyond it they are extrapolations, "
        "which the next section tests.",
        "",
        "## Extrapolation check",
        "",
        *_extrapolation_section(result),
        "",
        "## Compute-optimal frontier",
        "",
        "A run is on the frontier when no run with less or equal compute has a lower loss.",
        "",
        "| run | arch | F | steps | tokens | lr | C | L |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {p['name']} | {p['arch'] or '–'} | {p['n_features']} | {p['steps']} | {_g(p['tokens'])} | "
          f"{_g(p['lr'])} | {_g(p['compute'])} | {_g(p['loss'], 5)} |" for p in frontier),
        "",
        "## Excluded runs",
        "",
    ]
    if result["excluded"]:
        lines += ["Kept in the table, left out of every fit and of the frontier.", "",
                  "| run | reason |", "|---|---|",
                  *(f"| {e['name']} | {e['reason']} |" for e in result["excluded"])]
    else:
        lines.append("None.")
    pngs = [p for p in result["plots"] if p.endswith(".png")]
    if pngs:
        lines += ["", "## Plots", "", "(SVG versions beside the PNGs.)", ""]
        lines += [f"![{p[:-4]}]({p})" for p in pngs]
    return "\n".join(lines) + "\n"


def write_report(path: Path, result: dict[str, Any]) -> None:
    path.write_text(render_report(result), encoding="utf-8")
