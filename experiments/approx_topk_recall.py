"""Recall of `lax.approx_max_k` as TPU computes it (binning emulated: jaxdict/plan/approx_topk.py)
against the exact per-row top-k, on real SAE pre-activations and on Gaussian rows.

    python experiments/approx_topk_recall.py --run RUN_DIR --store STORE [--rows 4096]

RUN_DIR: a trained SAE (its pre-activations x·W_enc + b_enc on the store's first rows).
"""
from __future__ import annotations

import argparse

import numpy as np

from jaxdict.plan.approx_topk import recall, reduction_output_size

TARGETS = (0.99, 0.95, 0.9, 0.8)


def _rows(label: str, z: np.ndarray, k: int) -> list[str]:
    out = []
    for r in TARGETS:
        bins, _ = reduction_output_size(z.shape[1], k, r)
        out.append(f"| {label} | {z.shape[1]:,} | {k} | {r} | {bins:,} | {recall(z, k, r):.4f} |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--rows", type=int, default=4096)
    a = p.parse_args(argv)
    import jaxdict
    from jaxdict.sae.forward import pre_activations
    from jaxdict.store import open_store

    sae = jaxdict.load_sae(a.run)
    x = np.asarray(open_store(a.store).read(0, a.rows), np.float32)
    z = np.asarray(pre_activations(sae.params, x, sae.cfg), np.float32)
    k = sae.cfg.k
    print("| pre-activations | row length | k | recall_target | bins kept | measured recall |")
    print("|---|---|---|---|---|---|")
    lines = _rows(f"{a.run} on {a.store}", z, k)
    g = np.random.default_rng(0).standard_normal((256, 1 << 16)).astype(np.float32)
    lines += _rows("Gaussian", g, 64)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
