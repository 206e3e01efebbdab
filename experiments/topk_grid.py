"""TopK grid (Gao et al. 2024): F × k × steps, AuxK on dead latents, unit-norm decoder.

Points with different k cannot share a pass (k fixes the step's shapes); each is its own run.
"""
from base import BASE, TINY, derive


def grid(base, features, ks, steps, prefix):
    return [derive(base, f"{prefix}-F{f}-k{k}-s{s}", sae__arch="topk", sae__n_features=f, sae__k=k,
                   optim__total_steps=s, run__checkpoint_every=max(s // 4, 1))
            for f in features for k in ks for s in steps]


SWEEPS = {
    "gemma": lambda: grid(BASE, [2048, 4096, 8192, 16384], [32, 64], [500, 1000, 2000], "topk"),
    "tiny": lambda: grid(TINY, [64, 128], [4, 8], [50, 100], "topk-tiny"),
}
