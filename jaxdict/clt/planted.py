"""Planted cross-layer data for tests and benchmarks: a known sparse CLT generates the rows.

Codes s_l [n, P] (P planted features per layer, each firing with probability mean_active / P at
an exponential magnitude) give x_l = s_l E_l + noise and y_l' = Σ_{l ≤ l'} s_l D_{l→l'}, so the
targets genuinely mix layers: a per-layer transcoder cannot express y_l' from x_l' alone.
"""
from __future__ import annotations

import numpy as np


def planted_clt_rows(n: int, n_layers: int, d_model: int, n_planted: int = 16, mean_active: float = 3.0,
                     noise_std: float = 0.01, seed: int = 0) -> np.ndarray:
    """[n, 2·L·d] float32 rows [x_0 … x_{L−1} | y_0 … y_{L−1}] with E‖x_l‖² ≈ d."""
    rng = np.random.default_rng(seed)
    L, d, P = n_layers, d_model, n_planted
    enc = rng.normal(size=(L, P, d))
    enc /= np.linalg.norm(enc, axis=-1, keepdims=True)
    dec = rng.normal(size=(L, P, L, d)) / np.sqrt(L)
    for source in range(L):
        dec[source, :, :source] = 0.0  # a feature of layer l writes only to l' >= l
    fires = rng.random((n, L, P)) < mean_active / P
    codes = fires * rng.exponential(1.0, size=(n, L, P))
    x = np.einsum("nlp,lpd->nld", codes, enc) + noise_std * rng.normal(size=(n, L, d))
    y = np.einsum("nlp,lpmd->nmd", codes, dec)
    scale = np.sqrt(d / np.mean(np.sum(x ** 2, axis=-1)))
    return np.concatenate([(x * scale).reshape(n, -1), (y * scale).reshape(n, -1)], axis=1).astype(np.float32)
