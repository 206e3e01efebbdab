"""The static dashboard renders in headless Chromium from disk: the feature page shows its top
contexts with the token highlighted, and the index's script fills, sorts and links the table."""
from __future__ import annotations

import html
import re
import shutil
import subprocess

import pytest

from jaxdict.evaluate.dashboard import display_piece, page_name, write_dashboard

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def _example(words, hl, value):
    return {"row": 0, "value": value, "highlight": hl, "tokens": words,
            "acts": [value if j == hl else 0.1 * j for j in range(len(words))]}


def _pages():
    return [{
        "feature": 7, "max_act": 9.5, "density": 0.0123, "mean_act": 3.2,
        "promoted": [("\u2581import", 1.5), ("\u2581from", 1.2)], "suppressed": [("\u2581the", -0.8)],
        "neighbours": [(3, 0.41), (11, 0.2)],
        "top": [_example(["\u2581import", "\u2581numpy", "\u2581as", "\u2581np"], 1, 9.5),
                _example(["from", "\u2581scipy", "\u2581import", "\u2581<stats>"], 3, 7.25)],
        "quantiles": [("quantile 75-100 % (5–9.5)", [_example(["x", "\u2581=", "\u25811"], 2, 5.0)])],
    }, {
        "feature": 3, "max_act": 2.0, "density": 0.5, "mean_act": 1.0, "promoted": [], "suppressed": [],
        "neighbours": [(7, 0.41)], "top": [_example(["a", "b"], 0, 2.0)], "quantiles": [],
    }]


def _summary():
    rows = [{"id": i, "max": float(i), "density": 0.001 * (i + 1), "mean": 0.5, "page": None} for i in range(12)]
    for p in _pages():
        rows[p["feature"]].update(page=page_name(p["feature"]), promoted="'import'", example="import numpy",
                                  text="import numpy")
    return rows


def _dump_dom(path) -> str:
    r = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--no-first-run", "--dump-dom", path.resolve().as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_pages_are_self_contained(tmp_path):
    index = write_dashboard(tmp_path, _summary(), _pages(), "demo <SAE>", {"model": "gemma3-270m"})
    page = (tmp_path / "features" / page_name(7)).read_text()
    assert "http://" not in page and "https://" not in page and "http" not in index.read_text()
    assert "demo &lt;SAE&gt;" in page and html.escape(display_piece("\u2581<stats>")) in page
    assert 'href="feature_000003.html"' in page and "#11" in page and 'href="feature_000011.html"' not in page


@pytest.mark.skipif(BROWSER is None, reason="no chromium/chrome on this machine (apt-get install chromium)")
def test_dashboard_renders_in_headless_chromium(tmp_path):
    index = write_dashboard(tmp_path, _summary(), _pages(), "demo", {"model": "gemma3-270m"})
    dom = _dump_dom(tmp_path / "features" / page_name(7))
    top = re.search(r'<div id="top-contexts">(.*?)</div>\s*<h2', dom, re.S)
    assert top is not None, dom[:2000]
    contexts = re.findall(r'<div class="ctx">(.*?)</div>', top.group(1), re.S)
    assert len(contexts) == 2
    text = [re.sub(r"<[^>]+>", "", c) for c in contexts]
    assert text[0] == "9.500 import numpy as np" and text[1] == "7.250from scipy import &lt;stats&gt;"
    assert re.search(r'class="tok hl"[^>]*>\s?numpy<', contexts[0])
    assert re.search(r'class="tok hl"[^>]*> &lt;stats&gt;<', contexts[1])

    # The index table is built by its script: every feature listed, sorted by density (desc) first.
    dom = _dump_dom(index)
    assert "12 of 12 features" in dom
    ids = re.findall(r"<tr><td>(?:<a [^>]*>)?#(\d+)", dom)
    assert ids == [str(i) for i in range(11, -1, -1)]
    assert 'href="features/feature_000007.html"' in dom and 'href="features/feature_000003.html"' in dom
