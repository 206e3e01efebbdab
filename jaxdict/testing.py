"""Synthetic activations with a known sparse dictionary, for tests and benchmarks.

x = Σ_i c_i · d_i + b + noise, with planted unit directions d_i, sparse non-negative codes c
(each token activates on average `mean_active` features, magnitudes exponential) and Gaussian noise.
A good SAE recovers the planted directions: `mean_max_cosine` measures how well.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class PlantedDictionary:
    features: np.ndarray  # [n_planted, d_in], unit rows
    bias: np.ndarray  # [d_in]
    firing_prob: np.ndarray  # [n_planted]
    noise_std: float

    @property
    def d_in(self) -> int:
        return self.features.shape[1]

    def sample(self, n_tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (activations [n, d_in] float32, codes [n, n_planted] float32)."""
        rng = np.random.default_rng(seed)
        n_planted = self.features.shape[0]
        active = rng.random((n_tokens, n_planted)) < self.firing_prob[None, :]
        magnitudes = rng.exponential(1.0, size=(n_tokens, n_planted)) + 0.5
        codes = np.where(active, magnitudes, 0.0).astype(np.float32)
        noise = rng.normal(0.0, self.noise_std, size=(n_tokens, self.d_in))
        x = codes @ self.features + self.bias[None, :] + noise
        return x.astype(np.float32), codes


def planted_dictionary(
    d_in: int = 32,
    n_planted: int = 64,
    mean_active: float = 3.0,
    noise_std: float = 0.01,
    bias_scale: float = 0.1,
    seed: int = 0,
) -> PlantedDictionary:
    """Random unit features; firing probabilities spread over a decade (a Zipf-like mix) so that
    some features are rare, as in real models, with `mean_active` expected active per token."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n_planted, d_in))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    weights = np.exp(rng.uniform(np.log(0.1), np.log(1.0), size=n_planted))
    firing_prob = np.clip(weights / weights.sum() * mean_active, 0.0, 1.0)
    bias = rng.normal(size=d_in) * bias_scale
    return PlantedDictionary(features.astype(np.float32), bias.astype(np.float32), firing_prob, noise_std)


def mean_max_cosine(planted: np.ndarray, learned: np.ndarray) -> float:
    """For each planted direction, the best cosine with any learned decoder row; then the mean."""
    p = planted / np.linalg.norm(planted, axis=1, keepdims=True)
    q = learned / np.maximum(np.linalg.norm(learned, axis=1, keepdims=True), 1e-12)
    return float(np.mean(np.max(p @ q.T, axis=1)))
