"""Scaling Monosemanticity grid (Templeton et al. 2024): dictionary size F × training steps at a
fixed λ, ReLU-L1 — the points `jaxdict scaling fit` turns into L(C), F*(C) and S*(C).

    jaxdict sweep experiments/scaling_monosemanticity.py:tiny --out runs/sm-tiny
"""
from base import BASE, TINY, derive


def grid(base, features, steps, prefix):
    return [derive(base, f"{prefix}-F{f}-s{s}", sae__n_features=f, optim__total_steps=s,
                   run__checkpoint_every=max(s // 4, 1))
            for f in features for s in steps]


SWEEPS = {
    # Gemma 3 270M resid_post.9 on a CPU or one GPU: 4 sizes × 3 step counts (batch 1024 rows).
    "gemma": lambda: grid(BASE, [1024, 2048, 4096, 8192], [500, 1000, 2000], "sm"),
    "tiny": lambda: grid(TINY, [64, 128, 256], [50, 100], "sm-tiny"),
}
