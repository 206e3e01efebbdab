"""Static HTML feature dashboard: `index.html` (every feature, searchable and sortable) and one
page per explored feature under `features/`. No server and no network: data is inlined, so the
pages open from disk (file://) in any browser.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:3px 6px;
text-align:left;vertical-align:top}th{cursor:pointer;background:#f4f4f4;user-select:none}
.ctx{font-family:ui-monospace,monospace;white-space:pre-wrap;word-break:break-all;margin:2px 0;
padding:2px 4px;background:#fafafa;border-left:3px solid #ccc}
.tok{border-radius:2px}.hl{outline:2px solid #c22;font-weight:bold}
.val{color:#777;font-size:12px;margin-right:.6em}.pos{color:#16632c}.neg{color:#a12}
h2{margin-top:1.4em;font-size:1.1em}input{font-size:15px;padding:4px;width:28em}
.muted{color:#888}.stat{display:inline-block;margin-right:2em}
"""


def display_piece(piece: str) -> str:
    """A SentencePiece piece as readable text: U+2581 as a space, newlines and tabs visible."""
    return piece.replace("\u2581", " ").replace("\n", "\u21b5").replace("\t", "\u21e5")


def _context_html(tokens: Sequence[str], acts: Sequence[float], highlight: int, scale: float) -> str:
    spans = []
    for j, (t, a) in enumerate(zip(tokens, acts)):
        alpha = 0.0 if scale <= 0 else max(0.0, min(1.0, float(a) / scale))
        cls = "tok hl" if j == highlight else "tok"
        spans.append(f'<span class="{cls}" title="{a:.3f}" style="background:rgba(255,140,0,{alpha:.2f})">'
                     f"{html.escape(display_piece(t))}</span>")
    return "".join(spans)


def _examples_html(examples: Sequence[dict[str, Any]], scale: float) -> str:
    return "\n".join(
        f'<div class="ctx"><span class="val">{e["value"]:.3f}</span>'
        f'{_context_html(e["tokens"], e["acts"], e["highlight"], scale)}</div>' for e in examples)


def page_name(feature: int) -> str:
    return f"feature_{feature:06d}.html"


def render_feature_page(feat: dict[str, Any], title: str, has_page: set[int]) -> str:
    """One feature: stats, logit effects, neighbours, top contexts, quantile samples."""
    i = feat["feature"]
    scale = feat["max_act"]

    def tok_list(items, cls):
        return ", ".join(f'<span class="{cls}">{html.escape(repr(display_piece(t)))}</span> '
                         f'<span class="muted">{v:+.2f}</span>' for t, v in items)

    neighbours = ", ".join(
        (f'<a href="{page_name(j)}">#{j}</a>' if j in has_page else f"#{j}") + f' <span class="muted">({c:.2f})</span>'
        for j, c in feat["neighbours"])
    quantiles = "\n".join(f"<h3>{html.escape(label)}</h3>\n{_examples_html(ex, scale)}"
                          for label, ex in feat["quantiles"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>feature {i} · {html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
<p><a href="../index.html">← all features</a> · {html.escape(title)}</p>
<h1>Feature {i}</h1>
<p><span class="stat">max activation <b>{feat['max_act']:.4g}</b></span>
<span class="stat">density <b>{feat['density']:.3g}</b></span>
<span class="stat">mean when active <b>{feat['mean_act']:.3g}</b></span></p>
<h2>Promoted tokens (decoder direction through the unembedding)</h2><p>{tok_list(feat['promoted'], 'pos')}</p>
<h2>Suppressed tokens</h2><p>{tok_list(feat['suppressed'], 'neg')}</p>
<h2>Nearest features by decoder cosine</h2><p>{neighbours}</p>
<h2 id="top">Top activating contexts</h2>
<div id="top-contexts">{_examples_html(feat['top'], scale)}</div>
<h2>Random samples by activation quantile</h2>
{quantiles or '<p class="muted">no active samples</p>'}
</body></html>
"""


_INDEX_SCRIPT = """
const rows = FEATURES;
let key = "density", desc = true;
function esc(s){return s.replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));}
function draw(){
  const q = document.getElementById("q").value.toLowerCase().trim();
  let shown = rows.filter(r => !q || String(r.id) === q || (r.text||"").toLowerCase().includes(q));
  shown.sort((a,b) => { const x=a[key], y=b[key]; return (x<y?-1:x>y?1:0) * (desc?-1:1); });
  const body = shown.slice(0, 3000).map(r => `<tr><td>${r.page ? `<a href="features/${r.page}">#${r.id}</a>` : `#${r.id}`}</td>`
    + `<td>${r.max.toPrecision(4)}</td><td>${r.density.toPrecision(3)}</td><td>${r.mean.toPrecision(3)}</td>`
    + `<td>${esc(r.promoted||"")}</td><td class="ctx">${esc(r.example||"")}</td></tr>`).join("");
  document.getElementById("rows").innerHTML = body;
  document.getElementById("count").textContent = `${shown.length} of ${rows.length} features`;
}
document.querySelectorAll("th[data-k]").forEach(th => th.onclick = () => {
  desc = key === th.dataset.k ? !desc : true; key = th.dataset.k; draw(); });
document.getElementById("q").oninput = draw;
draw();
"""


def render_index(summary: Sequence[dict[str, Any]], title: str, info: dict[str, Any]) -> str:
    """summary rows: {id, max, density, mean, page|None, promoted, example, text}."""
    data = json.dumps(list(summary), separators=(",", ":")).replace("</", "<\\/")
    facts = " · ".join(f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in info.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1><p class="muted">{facts}</p>
<p><input id="q" placeholder="search: feature id, promoted token or context text"> <span id="count"></span></p>
<table><thead><tr><th data-k="id">feature</th><th data-k="max">max act</th><th data-k="density">density</th>
<th data-k="mean">mean act</th><th>promoted tokens</th><th>top context</th></tr></thead>
<tbody id="rows"></tbody></table>
<script>const FEATURES = {data};{_INDEX_SCRIPT}</script>
</body></html>
"""


def write_dashboard(out_dir: str | Path, summary: Sequence[dict[str, Any]], pages: Sequence[dict[str, Any]],
                    title: str, info: dict[str, Any]) -> Path:
    """Write index.html and features/feature_XXXXXX.html; returns the index path."""
    out = Path(out_dir)
    (out / "features").mkdir(parents=True, exist_ok=True)
    has_page = {p["feature"] for p in pages}
    for p in pages:
        (out / "features" / page_name(p["feature"])).write_text(render_feature_page(p, title, has_page),
                                                                 encoding="utf-8")
    index = out / "index.html"
    index.write_text(render_index(summary, title, info), encoding="utf-8")
    return index
