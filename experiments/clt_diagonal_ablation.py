"""How much of a CLT's reconstruction its cross-layer decoders carry: held-out fvu of every mlp_out.l'
with the trained CLT as it is, and with every block l → l' > l zeroed (only the l' = l decoders
left), on the same held-out rows `jaxdict eval` uses. A CLT whose cross-layer blocks carry nothing
loses nothing here: it is per-layer transcoders (issue 17 item 3). Decoder *mass* alone cannot say
this after a short run: it stays near its random initialisation's even split (experiments/results/clt.md).

    python experiments/clt_diagonal_ablation.py RUN [--tokens 8192]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxdict.clt.eval_run import heldout_batches, heldout_stores  # noqa: E402
from jaxdict.clt.evaluate import heldout_metrics  # noqa: E402
from jaxdict.clt.run import load_clt_run  # noqa: E402


def diagonal_only(params):
    """The same CLT with each W_dec[l][:, m > 0] (writes to l' = l + m > l) set to zero."""
    return params.replace(W_dec=tuple(np.concatenate([np.asarray(W)[:, :1], np.zeros_like(np.asarray(W)[:, 1:])],
                                                     axis=1) for W in params.W_dec))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a CLT run folder")
    p.add_argument("--tokens", type=int, default=8192, help="held-out rows (default 8192, as the report's eval)")
    args = p.parse_args(argv)
    run = load_clt_run(args.run)
    cfg = run.cfg
    _, _, stores, ranges = heldout_stores(run, tokens=args.tokens)
    full = heldout_metrics(run.params, cfg, heldout_batches(stores, ranges, cfg.n_layers))
    cut = heldout_metrics(diagonal_only(run.params), cfg, heldout_batches(stores, ranges, cfg.n_layers))
    print(json.dumps({"step": run.step, "n_tokens": full["n_tokens"], "fvu": full["fvu"], "fvu_diagonal_only": cut["fvu"],
                      "fvu_per_layer": full["fvu_per_layer"], "fvu_diagonal_only_per_layer": cut["fvu_per_layer"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
