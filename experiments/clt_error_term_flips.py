"""Why the replacement *with error terms* can move a logit: runs the clean and the error-corrected
replacement passes of `jaxdict eval` on a CLT run's held-out text and counts, per layer, the tokens
whose active feature set differs between the clean resid_mid and the replaced one. ŷ + (y − ŷ)
equals y only to float32 rounding; where a token's k-th and (k+1)-th TopK pre-activations nearly
tie, that rounding flips a feature, and the flip cascades through the later layers
(experiments/results/clt.md).

    python experiments/clt_error_term_flips.py RUN [--text-tokens 2048]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jaxdict.lm  # noqa: E402
from jaxdict.clt.eval_run import heldout_stores, heldout_text_windows  # noqa: E402
from jaxdict.clt.replacement import clean_errors, encode_layer, run_replaced  # noqa: E402
from jaxdict.clt.run import load_clt_run  # noqa: E402
from jaxdict.evaluate.spliced import pad_windows  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a CLT run folder")
    p.add_argument("--text-tokens", type=int, default=2048)
    args = p.parse_args(argv)
    run = load_clt_run(args.run)
    cfg = run.cfg
    _, fraction, stores, _ = heldout_stores(run)
    lm = jaxdict.lm.load(run.model)
    windows = heldout_text_windows(stores[0], "eval", fraction, args.text_tokens, lm.tokenizer.bos_id)
    params = jax.tree.map(jnp.asarray, run.params)
    for b in range(0, len(windows), 2):  # batch 2, as jaxdict eval's replacement pass
        ids, mask = pad_windows(windows[b:b + 2], lm.tokenizer.pad_id)
        where = mask.copy()
        where[:, 0] = False
        ids, mask, where_j = jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(where)
        kw = dict(config=lm.config, cfg=cfg)
        clean, rm_c, mo_c = run_replaced(lm.params, params, ids, mask, where_j, None, mode="clean", **kw)
        errors = clean_errors(params, rm_c, mo_c, cfg=cfg)
        repl, rm_r, _ = run_replaced(lm.params, params, ids, mask, where_j, errors, mode="replace", **kw)
        logit_diff = float(np.abs(np.asarray(repl) - np.asarray(clean)).max(axis=-1)[where].max())
        flips = [int(np.sum(np.any((np.asarray(encode_layer(params, rm_c[l], l, cfg)) > 0)
                                   != (np.asarray(encode_layer(params, rm_r[l], l, cfg)) > 0), axis=-1) & where))
                 for l in range(cfg.n_layers)]
        first = next((l for l, f in enumerate(flips) if f), None)
        resid = (float(np.abs(np.asarray(rm_r[first]) - np.asarray(rm_c[first])).max(axis=-1)[where].max())
                 if first is not None else 0.0)
        print(f"windows {b}-{b + 1}: max |Δlogit| {logit_diff:.3g}; tokens with a changed feature set per layer "
              f"{flips}; first at layer {first} (max |Δresid_mid| there {resid:.3g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
