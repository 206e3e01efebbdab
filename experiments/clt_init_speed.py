"""Where the time of initialising a CLT's parameters goes, each variant into the step's shardings on a
1 × 1 mesh: `init_params` eagerly; under `jax.jit` with the PRNG key a closure constant
(CLTTrainer.init) or an argument (the driver's run_layout.load_or_init); and `jit_per_block_draws`,
the decoder init as it was before (one `jax.random.normal` per source layer: L random kernels to
compile, vs one draw cut into blocks now).

    nice -n 5 python experiments/clt_init_speed.py --layers 18 --d-model 640 --features 1024
"""
from __future__ import annotations

import argparse
import json
import time

import jax

from jaxdict.clt.config import CLTConfig
from jaxdict.clt.params import init_params, param_shardings
from jaxdict.train.mesh import make_mesh


def per_block_init(cfg: CLTConfig, key: jax.Array):
    """The decoder init before: one draw per source layer (same distribution, other numbers)."""
    import jax.numpy as jnp

    L, d, F = cfg.n_layers, cfg.d_model, cfg.n_features
    enc_key, dec_key = jax.random.split(key)
    W_enc = jax.random.normal(enc_key, (L, d, F), jnp.float32)
    W_enc = W_enc / jnp.linalg.norm(W_enc, axis=1, keepdims=True)
    W_dec = []
    for layer, k in enumerate(jax.random.split(dec_key, L)):
        block = jax.random.normal(k, (F, L - layer, d), jnp.float32)
        W_dec.append(block / jnp.linalg.norm(block.reshape(F, -1), axis=1)[:, None, None])
    params = init_params(cfg, key)
    return params.replace(W_enc=W_enc, W_dec=tuple(W_dec))


def timed(fn) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=18)
    ap.add_argument("--d-model", type=int, default=640)
    ap.add_argument("--features", type=int, default=1024)
    ap.add_argument("--variants", default="eager,jit_const_key,jit_key_arg")
    args = ap.parse_args()
    cfg = CLTConfig(n_layers=args.layers, d_model=args.d_model, n_features=args.features)
    mesh = make_mesh(1, 1, devices=jax.devices()[:1])
    shardings = param_shardings(jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0))), mesh)
    n_params = sum(a.size for a in jax.tree.leaves(jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))))
    out = {"n_params": n_params, "jax": jax.__version__}
    for variant in args.variants.split(","):
        if variant == "eager_per_block_draws":
            out[variant] = {"total_s": timed(lambda: per_block_init(cfg, jax.random.PRNGKey(0)))}
        elif variant == "eager":
            out[variant] = {"total_s": timed(lambda: init_params(cfg, jax.random.PRNGKey(0)))}
        elif variant == "jit_const_key":  # the key is a closure constant of the traced function
            fn = jax.jit(lambda: init_params(cfg, jax.random.PRNGKey(0)), out_shardings=shardings)
            out[variant] = {"first_call_s": timed(fn), "second_call_s": timed(fn)}
        elif variant == "driver_state":  # what `jaxdict train` runs: params + Adam state, into shardings
            from jaxdict.clt.train_state import load_or_init_clt_state
            from jaxdict.train.optim import OptimConfig

            out[variant] = {"total_s": timed(lambda: load_or_init_clt_state(cfg, OptimConfig(), mesh).value)}
        elif variant == "jit_per_block_draws":
            fn = jax.jit(lambda key: per_block_init(cfg, key), out_shardings=shardings)
            key = jax.random.PRNGKey(0)
            out[variant] = {"first_call_s": timed(lambda: fn(key)), "second_call_s": timed(lambda: fn(key))}
        elif variant == "jit_key_arg":
            fn = jax.jit(lambda key: init_params(cfg, key), out_shardings=shardings)
            key = jax.random.PRNGKey(0)
            out[variant] = {"first_call_s": timed(lambda: fn(key)), "second_call_s": timed(lambda: fn(key))}
        else:
            raise SystemExit(f"unknown variant {variant!r}; valid: eager, eager_per_block_draws, driver_state, "
                             "jit_const_key, jit_key_arg, jit_per_block_draws")
        print(json.dumps({variant: out[variant]}), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
