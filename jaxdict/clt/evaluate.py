"""`jaxdict eval` of a CLT run: per-layer held-out fvu and L0 from the 2L stores, decoder mass
beyond l' = l, and the replacement model's delta_ce / kl (jaxdict.clt.replacement) with and
without error terms, beside the all-MLPs-zeroed baseline.

Definitions (DESIGN §4, as the SAE eval): fvu_l' = Σ‖y − ŷ‖² / Σ‖y − μ‖² over the held-out rows of
mlp_out.l', μ their mean; L0_l the mean active features of layer l per token (inference form);
delta_ce = CE_replaced − CE_clean; ce_recovered = (CE_zero − CE_replaced) / (CE_zero − CE_clean);
kl = mean KL(p_clean ‖ p_replaced) over real non-BOS positions (jaxdict.evaluate.spliced).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdict.clt.config import CLTConfig
from jaxdict.clt.params import CLTParams
from jaxdict.clt.replacement import clean_errors, encode_layer, reconstruct, run_replaced
from jaxdict.sae.metric_sums import DENSE_FIRING_RATE

# Below this share of decoder mass beyond l' = l the CLT is reported as effectively per-layer
# transcoders: our own cut-off (a twentieth), not a number from the literature.
PER_LAYER_SHARE = 0.05


def decoder_mass(params: CLTParams) -> dict[str, Any]:
    """Σ_i ‖W_dec,i[l → l']‖² summed over l' = l ("same") and over l' > l ("beyond") per source layer
    l, from raw-unit parameters, and the share beyond: per layer and overall (Σ beyond / Σ total)."""
    W = [np.asarray(block, np.float64) for block in params.W_dec]
    same = np.array([np.sum(np.square(b[:, 0])) for b in W])
    beyond = np.array([np.sum(np.square(b[:, 1:])) for b in W])
    total = same + beyond
    share = np.divide(beyond, total, out=np.zeros_like(total), where=total > 0)
    overall = float(beyond.sum() / total.sum()) if total.sum() > 0 else float("nan")
    # The share a decoder with equal mass in each of its span(l) blocks would have, e.g. the random
    # unit-norm initialisation in trained units (jaxdict.clt.params.init_params): (span − 1)/span,
    # span = L − l for a full CLT.
    spans = np.array([b.shape[1] for b in W], np.float64)
    uniform = (spans - 1) / spans
    return {"decoder_mass_same": same.tolist(), "decoder_mass_beyond": beyond.tolist(),
            "decoder_share_beyond": share.tolist(), "decoder_share_beyond_overall": overall,
            "decoder_share_beyond_uniform": uniform.tolist(),
            "decoder_share_beyond_uniform_overall": float(np.sum(spans - 1) / np.sum(spans)),
            "effectively_per_layer_transcoders": bool(overall < PER_LAYER_SHARE)}


@functools.partial(jax.jit, static_argnames=("cfg",))
def _batch_sums(params: CLTParams, x, y, shift, *, cfg: CLTConfig):
    xs = jnp.moveaxis(x, 1, 0)  # [L, n, d]
    y_hat = jnp.moveaxis(reconstruct(params, xs, cfg), 0, 1)
    fired = jnp.stack([jnp.sum(encode_layer(params, xs[l], l, cfg) > 0, axis=0, dtype=jnp.float32)
                       for l in range(cfg.n_layers)])  # [L, F]: rows on which each feature fired
    centred = y - shift[None]
    return {"res_sq": jnp.sum(jnp.square(y - y_hat), axis=(0, 2)), "y_sum": jnp.sum(centred, axis=0),
            "y_sq": jnp.sum(jnp.square(centred), axis=(0, 2)), "fired": fired}


def heldout_metrics(params: CLTParams, cfg: CLTConfig, batches, progress: Callable[[int], None] | None = None
                    ) -> dict[str, Any]:
    """Per-layer fvu of mlp_out.l' and L0 per source layer over batches of (x [n, L, d] resid_mid,
    y [n, L, d] mlp_out) raw rows. Sums are taken about the first batch's mean so that the variance
    subtraction does not cancel (as jaxdict.clt.heldout)."""
    totals: dict[str, np.ndarray] = {}
    shift, n = None, 0
    for x, y in batches:
        x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
        shift = jnp.mean(y, axis=0) if shift is None else shift
        for k, v in jax.device_get(_batch_sums(params, x, y, shift, cfg=cfg)).items():
            totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64)
        n += x.shape[0]
        if progress is not None:
            progress(x.shape[0])
    if n == 0:
        raise ValueError("no held-out rows to evaluate the CLT on")
    variance = totals["y_sq"] - np.sum(np.square(totals["y_sum"]), axis=-1) / n
    fvu = totals["res_sq"] / np.maximum(variance, 1e-30)
    l0 = totals["fired"].sum(axis=1) / n
    # dead: never fired on these rows; dense: fired on more than DENSE_FIRING_RATE of them (the SAE
    # evaluator's definitions, jaxdict.sae.metric_sums), per source layer.
    dead = np.mean(totals["fired"] == 0, axis=1)
    dense = np.mean(totals["fired"] / n > DENSE_FIRING_RATE, axis=1)
    return {"fvu": float(np.mean(fvu)), "l0": float(np.mean(l0)), "n_tokens": n,
            "dead_frac": float(np.mean(dead)), "dense_frac": float(np.mean(dense)),
            "fvu_per_layer": fvu.tolist(), "l0_per_layer": l0.tolist(),
            "dead_frac_per_layer": dead.tolist(), "dense_frac_per_layer": dense.tolist()}


def replacement_metrics(lm, params: CLTParams, cfg: CLTConfig, windows: Sequence[Sequence[int]],
                        batch_size: int = 2, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """delta_ce, ce_recovered and kl of the replacement model without and with error terms, the
    zero-ablation baseline, and the largest |logit| difference with error terms (the plumbing check)."""
    from jaxdict.evaluate.spliced import check_windows, pad_windows, token_losses

    check_windows(lm, windows)
    if lm.config.d_model != cfg.d_model:
        raise ValueError(f"the CLT has d_model {cfg.d_model} but the language model {lm.config.d_model}")
    params = jax.tree.map(jnp.asarray, params)
    run = lambda mode, ids, mask, where, errors=None: run_replaced(  # noqa: E731
        lm.params, params, ids, mask, where, errors, config=lm.config, cfg=cfg, mode=mode)
    names = ("replacement", "replacement_with_errors", "zero_ablation")
    ce = dict.fromkeys(("clean",) + names, 0.0)
    kl = dict.fromkeys(names, 0.0)
    n_loss = n_kl = 0
    max_logit_diff = 0.0
    for b in range(0, len(windows), batch_size):
        ids, mask = pad_windows(windows[b:b + batch_size], lm.tokenizer.pad_id)
        where = mask.copy()
        where[:, 0] = False  # BOS keeps its own MLP outputs, as every spliced metric
        loss_mask = where[:, :-1] & mask[:, 1:]
        ids_j, mask_j, where_j = jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(where)
        clean, resid_mid, mlp_out = run("clean", ids_j, mask_j, where_j)
        errors = clean_errors(params, resid_mid, mlp_out, cfg=cfg)
        edited = {"replacement": run("replace", ids_j, mask_j, where_j)[0],
                  "replacement_with_errors": run("replace", ids_j, mask_j, where_j, errors)[0],
                  "zero_ablation": run("zero", ids_j, mask_j, where_j)[0]}
        for name, logits in edited.items():
            ce_c, ce_e, kl_t = jax.device_get(token_losses(clean, logits, ids_j))
            ce[name] += float(np.sum(ce_e[loss_mask], dtype=np.float64))
            kl[name] += float(np.sum(kl_t[where], dtype=np.float64))
        ce["clean"] += float(np.sum(ce_c[loss_mask], dtype=np.float64))
        diff = np.abs(np.asarray(edited["replacement_with_errors"]) - np.asarray(clean))[where]
        max_logit_diff = max(max_logit_diff, float(diff.max()) if diff.size else 0.0)
        n_loss += int(loss_mask.sum())
        n_kl += int(where.sum())
        if progress is not None:
            progress(int(mask.sum()))
    if n_loss == 0:
        raise ValueError("the windows hold no position with a next token to predict (too short)")
    mean_ce = {k: v / n_loss for k, v in ce.items()}
    out: dict[str, Any] = {"ce_clean": mean_ce["clean"], "ce_zero_ablation": mean_ce["zero_ablation"],
                           "kl_zero_ablation": kl["zero_ablation"] / n_kl}
    gap = mean_ce["zero_ablation"] - mean_ce["clean"]
    for name, key in (("replacement", ""), ("replacement_with_errors", "_with_errors")):
        out[f"delta_ce{key}"] = mean_ce[name] - mean_ce["clean"]
        out[f"ce_recovered{key}"] = (mean_ce["zero_ablation"] - mean_ce[name]) / gap if gap else float("nan")
        out[f"kl{key}"] = kl[name] / n_kl
        out[f"ce_replacement{key}"] = mean_ce[name]
    out.update({"max_logit_diff_with_errors": max_logit_diff, "n_text_tokens": n_kl, "n_loss_tokens": n_loss})
    return out
