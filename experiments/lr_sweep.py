"""Learning-rate sweep along the compute frontier: for (F, steps) pairs on (or near) the frontier
of the Scaling Monosemanticity grid, several learning rates each. Points of one (F, steps) differ
only in lr and share one pass over the data; `jaxdict scaling fit` then fits lr*(C)."""
from base import BASE, TINY, derive

# F grows with compute along the frontier (Templeton et al. 2024 find F* and S* both rising as
# power laws); these pairs follow that diagonal of the grid in scaling_monosemanticity.py.
GEMMA_FRONTIER = [(1024, 500), (2048, 1000), (4096, 2000)]
TINY_FRONTIER = [(64, 50), (128, 100)]


def sweep(base, frontier, lrs, prefix):
    return [derive(base, f"{prefix}-F{f}-s{s}-lr{lr:g}", sae__n_features=f, optim__total_steps=s,
                   optim__lr=lr, run__checkpoint_every=max(s // 4, 1))
            for f, s in frontier for lr in lrs]


SWEEPS = {
    # A factor-2 ladder around the base's 1e-3 (measured to train in 250-2000 steps).
    "gemma": lambda: sweep(BASE, GEMMA_FRONTIER, [2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3], "lr"),
    "tiny": lambda: sweep(TINY, TINY_FRONTIER, [3e-4, 1e-3, 3e-3], "lr-tiny"),
}
