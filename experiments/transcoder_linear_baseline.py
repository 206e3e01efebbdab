"""The affine baseline of experiments/results/transcoders.md: the least-squares map x ↦ xA + c from
`mlp_in.9` to `mlp_out.9` (what a skip connection alone can represent), fitted on 200k training rows,
its fvu on the held-out split (5 % of documents, as the transcoder runs).

    python experiments/transcoder_linear_baseline.py runs/stores/tc/mlp_in.9 runs/stores/tc/mlp_out.9
"""
from __future__ import annotations

import argparse

import numpy as np

from jaxdict.data.paired import PairedSource


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs")
    parser.add_argument("targets")
    parser.add_argument("--fit-rows", type=int, default=200_000)
    parser.add_argument("--eval-rows", type=int, default=20_000)
    parser.add_argument("--eval-fraction", type=float, default=0.05)
    args = parser.parse_args()
    train = PairedSource(args.inputs, args.targets, split="train", eval_fraction=args.eval_fraction)
    held = PairedSource(args.inputs, args.targets, split="eval", eval_fraction=args.eval_fraction, check=False)
    d = train.d_input
    rows = np.asarray(train.read(0, min(train.n_rows, args.fit_rows)), np.float64)
    X = np.c_[rows[:, :d], np.ones(len(rows))]
    # A tiny ridge keeps the normal equations well posed; it moves fvu by < 1e-6 here.
    coef = np.linalg.solve(X.T @ X + 1e-6 * np.eye(d + 1), X.T @ rows[:, d:])
    ev = np.asarray(held.read(0, min(held.n_rows, args.eval_rows)), np.float64)
    y = ev[:, d:]
    pred = np.c_[ev[:, :d], np.ones(len(ev))] @ coef
    fvu = np.sum((y - pred) ** 2) / np.sum((y - y.mean(0)) ** 2)
    print(f"held-out rows {len(y)}  affine fvu {fvu:.4f}")


if __name__ == "__main__":
    main()
