"""Evaluation output: a readable metrics table and the log10 feature-density histogram (PNG)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

# Order and one-line meaning of the reported metrics (DESIGN §4).
METRIC_NOTES = {
    "fvu": "Σ‖x−x̂‖² / Σ‖x−μ‖², μ over the whole eval set",
    "explained_variance": "1 − fvu",
    "mse": "mean squared error per dimension (raw units)",
    "l0": "mean active latents per token",
    "dead_frac": "latents that never fired on the eval tokens",
    "dense_frac": "latents firing on > 10 % of tokens",
    "n_tokens": "activation tokens evaluated",
    "delta_ce": "CE with SAE spliced in − clean CE (nats)",
    "ce_recovered": "(CE_zero − CE_sae) / (CE_zero − CE_clean)",
    "kl": "mean KL(p_clean ‖ p_sae) per token (nats)",
    "ce_clean": "clean next-token CE (nats)",
    "ce_sae": "CE with the SAE reconstruction spliced in",
    "ce_zero_ablation": "CE with the hook zeroed",
    "kl_zero_ablation": "KL of the zero ablation",
    "n_text_tokens": "text tokens run through the LM",
}


def _fmt(v: Any) -> str:
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.5g}"
    return str(v)


def format_table(metrics: Mapping[str, Any], title: str = "") -> str:
    """Plain-text table: metric | value | meaning."""
    rows = [(k, _fmt(v), METRIC_NOTES.get(k, "")) for k, v in metrics.items()
            if isinstance(v, (int, float, np.integer, np.floating))]
    w0 = max([len("metric")] + [len(r[0]) for r in rows])
    w1 = max([len("value")] + [len(r[1]) for r in rows])
    lines = [title] if title else []
    lines.append(f"{'metric':<{w0}}  {'value':>{w1}}  meaning")
    lines.append(f"{'-' * w0}  {'-' * w1}  {'-' * 7}")
    lines += [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def density_histogram(density: np.ndarray, path: str | Path, n_tokens: int, title: str = "") -> Path:
    """Histogram of log10(feature density) to a PNG; dead latents are counted in the caption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    density = np.asarray(density, np.float64)
    alive = density[density > 0]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if len(alive):
        ax.hist(np.log10(alive), bins=60, color="#3b6ea8")
    ax.axvline(math.log10(0.1), color="#b33", ls="--", lw=1, label="dense (10 %)")
    ax.set_xlabel("log10(fraction of tokens the feature fires on)")
    ax.set_ylabel("features")
    ax.set_title(title or "feature density")
    ax.text(0.01, 0.97, f"{int(np.sum(density == 0))} of {len(density)} dead over {n_tokens:,} tokens",
            transform=ax.transAxes, va="top", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
