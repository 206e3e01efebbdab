"""λ sweep (ReLU-L1) at a fixed size: the sparsity / reconstruction trade-off. Points differ only
in λ, so the runner trains them together on one pass over the data (a sweep axis)."""
from base import BASE, TINY, derive


def sweep(base, coeffs, prefix):
    return [derive(base, f"{prefix}-l1-{c:g}", sae__l1_coeff=c) for c in coeffs]


def cpu(base):
    """F = 1024, 500 steps of 512 rows: five λ on one pass in about a minute on a 2-core CPU."""
    small = derive(base, "l1-cpu", sae__n_features=1024, optim__total_steps=500, data__batch_size=512,
                   data__eval_rows=8192, run__checkpoint_every=250)
    return sweep(small, [0.25, 0.5, 1.0, 2.0, 5.0], "l1-cpu")


SWEEPS = {
    # Around the base's λ = 1, up to Scaling Monosemanticity's 5 (inputs scaled to E‖x‖² = d_in;
    # on this mean-dominated stream λ = 5 silences every latent in short runs, see base.py).
    "gemma": lambda: sweep(BASE, [0.25, 0.5, 1.0, 2.0, 5.0], "relu"),
    "cpu": lambda: cpu(BASE),
    "tiny": lambda: sweep(TINY, [1.0, 5.0, 20.0], "tiny"),
}
