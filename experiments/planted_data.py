"""A planted-dictionary activation store, and how well a trained run recovered it.

    python experiments/planted_data.py make --out runs/planted/data     # writes data.npz, features.npy
    jaxdict store import runs/planted/data/data.npz --out runs/planted/store
    jaxdict train --config experiments/quality.py:planted --set sae.arch=topk --out runs/planted/topk
    python experiments/planted_data.py score runs/planted/topk --features runs/planted/data/features.npy

x = Σ_i c_i·d_i + b + noise: `n_planted` random unit directions d_i in d_in dimensions, feature i
firing with probability ∝ (i + 1)^(−alpha) (a power law, as feature frequencies in LMs are; scaled
so `mean_active` fire per row on average, none above `max_prob`), magnitudes 0.5 + Exp(1), Gaussian
noise of std `noise_std` per dimension. Recovery = mean over planted directions of the best cosine
with any learned decoder row (jaxdict.testing.mean_max_cosine).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from jaxdict.testing import PlantedDictionary, mean_max_cosine


def power_law_dictionary(d_in: int, n_planted: int, mean_active: float, alpha: float, noise_std: float,
                         seed: int, max_prob: float = 0.5) -> PlantedDictionary:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n_planted, d_in))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    weights = (np.arange(n_planted) + 1.0) ** (-alpha)
    prob = weights / weights.sum() * mean_active
    for _ in range(50):  # cap the densest features, give the excess to the others
        over = prob > max_prob
        if not over.any():
            break
        excess = float(np.sum(prob[over] - max_prob))
        prob[over] = max_prob
        prob[~over] += excess * prob[~over] / prob[~over].sum()
    bias = rng.normal(size=d_in) * 0.1
    return PlantedDictionary(features.astype(np.float32), bias.astype(np.float32), prob, noise_std)


def make(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    planted = power_law_dictionary(args.d_in, args.n_planted, args.mean_active, args.alpha, args.noise_std, args.seed)
    x, codes = planted.sample(args.rows, seed=args.seed + 1)
    np.savez(out / "data.npz", activations=x)
    np.save(out / "features.npy", planted.features)
    l0 = (codes > 0).sum(axis=1)
    print(f"{out}: {args.rows} rows, d_in {args.d_in}, {args.n_planted} planted features; active per row "
          f"mean {l0.mean():.2f}; firing prob {planted.firing_prob.max():.3f} .. {planted.firing_prob.min():.5f}")


def score(args) -> None:
    from jaxdict.sae.io import load_sae

    features = np.load(args.features)
    for run in args.runs:
        sae = load_sae(run)  # raw-unit params: W_dec rows rescaled by one constant, cosines unchanged
        print(f"{run}: mean max cosine {mean_max_cosine(features, np.asarray(sae.params.W_dec)):.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make", help="write data.npz (for `jaxdict store import`) and features.npy")
    p.add_argument("--out", required=True)
    p.add_argument("--d-in", type=int, default=128)
    p.add_argument("--n-planted", type=int, default=512)
    p.add_argument("--mean-active", type=float, default=6.0)
    p.add_argument("--alpha", type=float, default=0.8, help="power-law exponent of the firing frequencies")
    p.add_argument("--noise-std", type=float, default=0.01)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=make)
    p = sub.add_parser("score", help="mean max cosine of runs' decoders with the planted features")
    p.add_argument("runs", nargs="+")
    p.add_argument("--features", required=True)
    p.set_defaults(fn=score)
    args = parser.parse_args(argv)
    args.fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
