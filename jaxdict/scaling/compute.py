"""Training compute C of a run: the dense FLOPs of the SAE's maths, whatever kernel ran.

DESIGN.md §7 counts one training token of a dictionary of F latents on d_in inputs as
10·d·F FLOPs: the encoder and decoder matmuls forward (2·d·F each) and, backward, the decoder's
weight and input gradients and the encoder's weight gradient (2·d·F each; the input needs no
gradient). Every architecture (ReLU-L1, TopK, BatchTopK, JumpReLU) does this maths; a sparse
decoder only skips zeros, so it changes the kernel's cost (`jaxdict.bench.step.kernel_step_flops`,
used for MFU) but not C. Scaling fits therefore see the same C for the same (d, F, tokens) whatever
`decode` chose, and the frontier does not move when a kernel improves.
"""
from __future__ import annotations

DENSE_FLOPS_PER_TOKEN_FEATURE_INPUT = 10  # 10·d·F per token (DESIGN.md §7, see above)


def training_compute(d_in: int, n_features: int, tokens: float) -> float:
    """C = 10 · d_in · F · tokens: the dense FLOPs of training on `tokens` rows."""
    return float(DENSE_FLOPS_PER_TOKEN_FEATURE_INPUT) * d_in * n_features * tokens


def epochs(tokens: float, train_rows: int) -> float:
    """How many times a run read its training split: tokens trained / rows in the split."""
    if train_rows <= 0:
        raise ValueError(f"the training split has {train_rows} rows; it needs at least one")
    return tokens / train_rows


def repeat_warning(name: str, tokens: float, train_rows: int) -> str | None:
    """A one-line warning when a run reads its data more than once (None otherwise): scaling fits
    assume every token is fresh, so a repeated run's loss is not a single-epoch loss."""
    n = epochs(tokens, train_rows)
    if n <= 1.0:
        return None
    return (f"warning: {name} trains on {tokens:,.0f} tokens, {n:.2f} epochs of its {train_rows:,} training "
            "rows: it repeats its data, which scaling fits (single epoch) do not model")
