"""Steering output: a plain-text table and a static HTML page of baseline vs steered continuations."""
from __future__ import annotations

import html
from typing import Any, Sequence


def _short(text: str, n: int = 60) -> str:
    text = text.replace("\n", "\u21b5")
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def steering_table(results: Sequence[dict[str, Any]]) -> str:
    """One line per (prompt, strength): KL, Δ log p(promoted), read-back activation, text start."""
    lines = [f"{'prompt':<24} {'c':>6} {'kl':>8} {'dlogp':>8} {'readback':>10}  continuation",
             f"{'-' * 24} {'-' * 6} {'-' * 8} {'-' * 8} {'-' * 10}  {'-' * 12}"]
    for r in results:
        p = _short(r["prompt"], 24)
        rb = " ".join(f"{v:.3g}" for v in r["baseline"]["readback"])
        lines.append(f"{p:<24} {'base':>6} {'':>8} {'':>8} {rb:>10}  {_short(r['baseline']['text'])}")
        for s in r["steered"]:
            rb = " ".join(f"{v:.3g}" for v in s["readback"])
            lines.append(f"{'':<24} {s['strength']:>6g} {s['kl']:>8.4f} {s['dlogp_promoted']:>+8.3f} {rb:>10}  "
                         f"{_short(s['text'])}")
    return "\n".join(lines)


def steering_html(results: Sequence[dict[str, Any]], title: str) -> str:
    blocks = []
    for r in results:
        rows = [f"<tr><td>baseline</td><td></td><td></td><td>{_nums(r['baseline']['readback'])}</td>"
                f"<td class=t>{html.escape(r['baseline']['text'])}</td></tr>"]
        for s in r["steered"]:
            rows.append(f"<tr><td>c = {s['strength']:g}</td><td>{s['kl']:.4f}</td><td>{s['dlogp_promoted']:+.3f}</td>"
                        f"<td>{_nums(s['readback'])}</td><td class=t>{html.escape(s['text'])}</td></tr>")
        blocks.append(
            f"<h2>Prompt</h2><p class=t><b>{html.escape(r['prompt'])}</b></p>"
            f"<p>features {r['features']} (max activations {_nums(r['max_activations'])}); promoted tokens: "
            f"{html.escape(', '.join(repr(t.replace(chr(0x2581), ' ')) for t in r['promoted_tokens'][:12]))}</p>"
            "<table><tr><th>run</th><th>KL(base‖steered)</th><th>Δ log p(promoted)</th>"
            "<th>read-back activation</th><th>continuation</th></tr>" + "".join(rows) + "</table>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>
body{{font:14px/1.45 system-ui,sans-serif;margin:1.5em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}}
.t{{font-family:ui-monospace,monospace;white-space:pre-wrap}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Features clamped to c × max activation at the hook, SAE error term kept, at every position including
generated tokens. KL and Δ log p are teacher-forced on the baseline continuation.</p>
{''.join(blocks)}</body></html>
"""


def _nums(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.3g}" for v in values)
