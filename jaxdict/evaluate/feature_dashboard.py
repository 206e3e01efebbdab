"""What `jaxdict features` builds: scan a sample of the SAE's store, write the feature statistics
(max_activations.npy for `jaxdict steer`, feature_stats.npz), features.json, the static HTML
dashboard and, for any search texts, search.json."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxdict.evaluate import heldout
from jaxdict.evaluate.dashboard import write_dashboard
from jaxdict.evaluate.explorer import FeatureScan, scan_features, search_text
from jaxdict.evaluate.feature_pages import feature_pages, index_rows
from jaxdict.sae.inference import SAE

# Store rows per encoder batch of the scan.
_BATCH_ROWS = 4096


@dataclasses.dataclass
class FeatureDashboard:
    sae: SAE  # with the scanned max activations
    scan: FeatureScan
    pages: list[dict[str, Any]]
    info: dict[str, Any]  # model, hook, step, tokens, dead, store
    index: Path  # the dashboard's index.html
    search: list[dict[str, Any]]  # one per search text


def _read_sample(store, split: str, eval_fraction: float, tokens: int,
                 progress: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Up to `tokens` store rows of `split` as float32 [N, d], and their token/doc metadata."""
    from tqdm import tqdm

    ranges = heldout.split_ranges(store, split, eval_fraction, max_rows=tokens)
    n = sum(b - a for a, b in ranges)
    if n == 0:
        raise ValueError(f"store {store.path} has no rows in split {split!r}")
    bar = tqdm(total=n, unit="tok", unit_scale=True, desc="features", disable=not progress)
    parts = []
    for x in heldout.iter_activation_batches(store, ranges, _BATCH_ROWS):
        parts.append(np.asarray(x, np.float32))
        bar.update(len(x))
    bar.close()
    return np.concatenate(parts), heldout.read_meta_ranges(store, ranges)


def _write_stats(out: Path, scan: FeatureScan) -> None:
    np.save(out / "max_activations.npy", scan.max_act.astype(np.float32))
    np.savez(out / "feature_stats.npz", max_act=scan.max_act, density=scan.density,
             mean_active=scan.mean_active, fire_count=scan.fire_count, n_tokens=scan.n_tokens)


def build_feature_dashboard(run: str, out_dir: str | Path, *, step: int | None = None, store: str | None = None,
                            split: str = "all", eval_fraction: float | None = None, tokens: int = 100_000,
                            features: Sequence[int] | None = None, pages: int = 100, n_top: int = 12,
                            search: Sequence[str] = (), model: str | None = None, seed: int = 0,
                            progress: bool = True) -> FeatureDashboard:
    """Scan `tokens` rows of the SAE's store (or `store`) and write its feature dashboard to `out_dir`.

    Pages go to `features`, else to the first `pages` features that fire. Bad input raises
    ValueError / FileNotFoundError naming the value."""
    import jaxdict.lm
    from jaxdict.sae.io import load_sae

    if tokens < 1 or pages < 0 or n_top < 1:
        raise ValueError(f"--tokens ({tokens}) and --n-top ({n_top}) must be >= 1, --pages ({pages}) >= 0")
    sae = load_sae(run, step)
    eval_fraction = heldout.resolve_eval_fraction(sae, eval_fraction)
    chosen = [sae.check_feature(i) for i in features] if features else None
    store_obj = heldout.open_sae_store(sae, store, run)
    model = heldout.resolve_model(sae, model, store_obj.metadata)
    x_all, meta = _read_sample(store_obj, split, eval_fraction, tokens, progress)
    n = len(x_all)
    scan = scan_features(sae, (x_all[i:i + _BATCH_ROWS] for i in range(0, n, _BATCH_ROWS)), n_top=n_top, seed=seed)
    sae = sae.with_max_activations(scan.max_act)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_stats(out, scan)
    if chosen is None:
        chosen = [int(i) for i in np.flatnonzero(scan.fire_count > 0)[:pages]]
    lm = jaxdict.lm.load(model)
    page_list = feature_pages(sae, lm, scan, x_all, meta, chosen)
    title = f"{Path(run).name} · {sae.hook} · {sae.cfg.arch} F={sae.n_features}"
    info = {"model": model, "hook": sae.hook, "step": sae.step, "tokens": scan.n_tokens,
            "dead": int(np.sum(scan.fire_count == 0)), "store": store_obj.path}
    index = write_dashboard(out, index_rows(scan, page_list), page_list, title, info)
    (out / "features.json").write_text(json.dumps({"info": info, "features": page_list}))
    results = [search_text(lm, sae, text) for text in search]
    if search:
        (out / "search.json").write_text(json.dumps(results, indent=1))
    return FeatureDashboard(sae=sae, scan=scan, pages=page_list, info=info, index=index, search=results)
