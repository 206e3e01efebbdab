"""Scaling Monosemanticity grid (Templeton et al. 2024): dictionary size F × training steps at a
fixed λ, ReLU-L1 — the points `jaxdict scaling fit` turns into L(C), F*(C) and S*(C).

    jaxdict sweep experiments/scaling_monosemanticity.py:tiny --out runs/sm-tiny
"""
from base import BASE, TINY, derive


def grid(base, features, steps, prefix):
    return [derive(base, f"{prefix}-F{f}-s{s}", sae__n_features=f, optim__total_steps=s,
                   run__checkpoint_every=max(s // 4, 1))
            for f in features for s in steps]


def cpu(base):
    """The grid that fits a 2-core CPU in minutes: batch 512, F 256..2048, 200..800 steps.

    λ = 1 rather than 5: Gemma 3 270M's resid_post.9 is dominated by its mean (‖μ‖² ≈ 93 % of
    E‖x‖²), so after scaling to E‖x‖² = d_in only ~7 % of d_in is variance to explain and λ = 5
    switches every latent off within a few hundred steps (measured: fvu 1.00, l0 0.7 at step 40);
    lr 1e-3 because these runs are 10-100× shorter than the paper's."""
    small = derive(base, "sm-cpu", sae__l1_coeff=1.0, optim__lr=1e-3, data__batch_size=512,
                   data__eval_rows=8192, run__log_every=50)
    return grid(small, [256, 512, 1024, 2048], [200, 400, 800], "sm-cpu")


def cpu_large(base):
    """The same setting as `cpu` with one more size and longer runs (5 sizes × 4 step counts)."""
    small = derive(base, "sm-cpul", sae__l1_coeff=1.0, optim__lr=1e-3, data__batch_size=512,
                   data__eval_rows=8192, run__log_every=50)
    return grid(small, [256, 512, 1024, 2048, 4096], [250, 500, 1000, 2000], "sm-cpul")


SWEEPS = {
    # Gemma 3 270M resid_post.9 on a CPU or one GPU: 4 sizes × 3 step counts (batch 1024 rows).
    "gemma": lambda: grid(BASE, [1024, 2048, 4096, 8192], [500, 1000, 2000], "sm"),
    "cpu": lambda: cpu(BASE),
    "cpu-large": lambda: cpu_large(BASE),
    "tiny": lambda: grid(TINY, [64, 128, 256], [50, 100], "sm-tiny"),
}
