"""Assemble what the dashboard shows for each explored feature from a `FeatureScan`."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from jaxdict.evaluate.dashboard import display_piece, page_name
from jaxdict.evaluate.explorer import (
    FeatureScan,
    context_ranges,
    decoder_neighbours,
    feature_values_at,
    logit_effects,
    quantile_examples,
)
from jaxdict.sae.inference import SAE


def feature_pages(sae: SAE, lm, scan: FeatureScan, x: np.ndarray, meta: dict[str, np.ndarray],
                  features: Sequence[int], n_tokens_shown: int = 10, before: int = 12, after: int = 4
                  ) -> list[dict[str, Any]]:
    """Per feature: stats, promoted/suppressed tokens, neighbours, top contexts and quantile samples.

    x [n, d] and meta (token_ids, doc_ids, positions) [n] are the scanned sample, in scan order.
    Context tokens are shaded by the feature's activation on each of them.
    """
    features = [int(i) for i in features]
    tok = lm.tokenizer
    prom_i, prom_v, supp_i, supp_v = logit_effects(sae, lm, features, n_tokens_shown)
    nb_i, nb_c = decoder_neighbours(sae, features)
    # Every example row (top + quantile samples) of every feature, then their contexts.
    plans = []
    for k, i in enumerate(features):
        top = [(int(r), float(v)) for r, v in zip(scan.top_rows[i], scan.top_values[i]) if r >= 0]
        quant = quantile_examples(scan.sample_values[i], scan.sample_rows[i])
        plans.append((top, quant))
    all_rows = [r for top, quant in plans for r, _ in top + [e for _, ex in quant for e in ex]]
    ranges = dict(zip(all_rows, context_ranges(np.asarray(all_rows, np.int64), meta["doc_ids"],
                                               meta["positions"], before, after))) if all_rows else {}
    pairs, owners = [], []
    for k, (i, (top, quant)) in enumerate(zip(features, plans)):
        for r, _ in top + [e for _, ex in quant for e in ex]:
            lo, hi = ranges[r]
            pairs += [(row, i) for row in range(lo, hi)]
            owners.append((k, r, lo, hi))
    values = feature_values_at(sae, x, pairs) if pairs else np.zeros(0, np.float32)
    acts_of: dict[tuple[int, int], np.ndarray] = {}
    offset = 0
    for k, r, lo, hi in owners:
        acts_of[(k, r)] = values[offset:offset + hi - lo]
        offset += hi - lo

    def example(k: int, r: int, v: float) -> dict[str, Any]:
        lo, hi = ranges[r]
        return {"row": r, "value": v, "highlight": r - lo,
                "tokens": [tok.id_to_piece(int(t)) for t in meta["token_ids"][lo:hi]],
                "acts": [float(a) for a in acts_of[(k, r)]]}

    pages = []
    for k, (i, (top, quant)) in enumerate(zip(features, plans)):
        pages.append({
            "feature": i, "max_act": float(scan.max_act[i]), "density": float(scan.density[i]),
            "mean_act": float(scan.mean_active[i]),
            "promoted": [(tok.id_to_piece(int(t)), float(v)) for t, v in zip(prom_i[k], prom_v[k])],
            "suppressed": [(tok.id_to_piece(int(t)), float(v)) for t, v in zip(supp_i[k], supp_v[k])],
            "neighbours": [(int(j), float(c)) for j, c in zip(nb_i[k], nb_c[k])],
            "top": [example(k, r, v) for r, v in top],
            "quantiles": [(label, [example(k, r, v) for r, v in ex]) for label, ex in quant],
        })
    return pages


def index_rows(scan: FeatureScan, pages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary row per feature for the index (pages add promoted tokens and a context)."""
    by_id = {p["feature"]: p for p in pages}
    rows = []
    for i in range(len(scan.max_act)):
        row = {"id": i, "max": round(float(scan.max_act[i]), 5), "density": float(scan.density[i]),
               "mean": round(float(scan.mean_active[i]), 5), "page": None}
        p = by_id.get(i)
        if p is not None:
            row["page"] = page_name(i)
            row["promoted"] = " ".join(repr(display_piece(t)) for t, _ in p["promoted"][:6])
            if p["top"]:
                row["example"] = "".join(display_piece(t) for t in p["top"][0]["tokens"])
            row["text"] = " ".join([row["promoted"], row.get("example", "")] +
                                   ["".join(display_piece(t) for t in e["tokens"]) for e in p["top"][1:4]])
        rows.append(row)
    return rows
