"""λ sweep (ReLU-L1) at a fixed size: the sparsity / reconstruction trade-off. Points differ only
in λ, so the runner trains them together on one pass over the data (a sweep axis)."""
from base import BASE, TINY, derive


def sweep(base, coeffs, prefix):
    return [derive(base, f"{prefix}-l1-{c:g}", sae__l1_coeff=c) for c in coeffs]


SWEEPS = {
    # Around Scaling Monosemanticity's λ = 5 (inputs scaled to E‖x‖² = d_in).
    "gemma": lambda: sweep(BASE, [1.0, 2.0, 5.0, 10.0, 20.0], "relu"),
    "tiny": lambda: sweep(TINY, [1.0, 5.0, 20.0], "tiny"),
}
