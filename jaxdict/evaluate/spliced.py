"""The SAE spliced into the language model at its hook: delta_ce, ce_recovered and kl.

Positions: a window is [BOS, t_1, ..., t_n] right-padded. The SAE replaces the residual stream
at every real token except BOS (BOS was never harvested, and its activation is an outlier the SAE
never saw); the BOS row and padding keep x. Losses are taken at every input position t ≥ 1 with a
real next token (next-token CE), `kl` = KL(p_clean ‖ p_edited) at every real position t ≥ 1.
The BOS position is unaffected by any edit (causal attention), so masking it only removes zeros.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdict.sae.config import SAEConfig
from jaxdict.sae.inference import SAE, decode_raw, encode_raw

EditFn = Callable[[jax.Array, Any], jax.Array]
# An edit applied on the positions mask `where` [B, S]: (fn, where -> args).
MaskedEdit = tuple[EditFn, Callable[[jax.Array], Any]]


@functools.lru_cache(maxsize=None)
def reconstruction_edit(cfg: SAEConfig) -> EditFn:
    """fn(x, (params, where)): x̂ = SAE(x) where `where`, x elsewhere. One function per cfg, so
    the LM compiles once per SAE shape (the LM treats edit functions as static)."""

    def splice(x: jax.Array, args: Any) -> jax.Array:
        params, where = args
        x_hat = decode_raw(params, encode_raw(params, x, cfg), cfg).astype(x.dtype)
        return jnp.where(where[..., None], x_hat, x)

    return splice


@functools.lru_cache(maxsize=None)
def transcoder_replacement_edit(cfg: SAEConfig, reads: str) -> EditFn:
    """fn(y, (params, where), source=x): at a transcoder's target hook (e.g. mlp_out.L) the value
    becomes its prediction from the input hook `reads` (e.g. mlp_in) of the same block, where
    `where`; the MLP's own output elsewhere. The MLP is replaced, not corrected: no error term."""

    def replace(y: jax.Array, args: Any, source: jax.Array) -> jax.Array:
        params, where = args
        f = encode_raw(params, source, cfg)
        y_hat = decode_raw(params, f, cfg, source).astype(y.dtype)
        return jnp.where(where[..., None], y_hat, y)

    replace.reads = reads
    return replace


def zero_ablation_edit(x: jax.Array, where: jax.Array) -> jax.Array:
    """The residual stream set to 0 where `where` (the ce_recovered baseline)."""
    return jnp.where(where[..., None], jnp.zeros_like(x), x)


@jax.jit
def token_losses(clean_logits: jax.Array, edited_logits: jax.Array, ids: jax.Array):
    """Per position t: CE of token t+1 under both logits, and KL(p_clean ‖ p_edited) at t.

    Returns (ce_clean [B, S-1], ce_edited [B, S-1], kl [B, S]) in float32.
    """
    lp_clean = jax.nn.log_softmax(clean_logits.astype(jnp.float32), axis=-1)
    lp_edit = jax.nn.log_softmax(edited_logits.astype(jnp.float32), axis=-1)
    target = ids[:, 1:, None]
    ce_clean = -jnp.take_along_axis(lp_clean[:, :-1], target, axis=-1)[..., 0]
    ce_edit = -jnp.take_along_axis(lp_edit[:, :-1], target, axis=-1)[..., 0]
    kl = jnp.sum(jnp.exp(lp_clean) * (lp_clean - lp_edit), axis=-1)
    return ce_clean, ce_edit, kl


def pad_windows(windows: Sequence[Sequence[int]], pad_id: int, quantum: int = 32
                ) -> tuple[np.ndarray, np.ndarray]:
    """(ids [B, S] int32, mask [B, S] bool), right-padded to a multiple of `quantum` (fewer compiles)."""
    longest = max(len(w) for w in windows)
    S = -(-longest // quantum) * quantum
    ids = np.full((len(windows), S), pad_id, np.int32)
    mask = np.zeros((len(windows), S), bool)
    for i, w in enumerate(windows):
        ids[i, :len(w)] = w
        mask[i, :len(w)] = True
    return ids, mask


def check_windows(lm, windows: Sequence[Sequence[int]]) -> None:
    """Text windows the spliced metrics can run: at least one, each starting with BOS (left alone by
    every edit) and no longer than the model's context."""
    if not windows:
        raise ValueError("no text windows to evaluate on")
    bos = lm.tokenizer.bos_id
    for w in windows:
        if not w or w[0] != bos:
            raise ValueError(f"every window must start with BOS ({bos}); got one starting {list(w[:3])}")
        if len(w) > lm.config.max_context:
            raise ValueError(f"window of {len(w)} tokens exceeds the context length {lm.config.max_context}")


def compare_edits(lm, hook: str, windows: Sequence[Sequence[int]], edits: Mapping[str, MaskedEdit],
                  batch_size: int = 2, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Mean next-token CE of the clean LM and of each edit at `hook`, and each edit's mean KL.

    Returns {"ce_clean", "n_loss_tokens", "n_kl_tokens", "<name>": {"ce", "kl"}}. Windows must
    start with BOS; edits act on real non-BOS positions only.
    """
    check_windows(lm, windows)
    if not edits:
        raise ValueError("compare_edits needs at least one edit to compare with the clean model")
    sums = {name: [0.0, 0.0] for name in edits}
    ce_clean_sum = 0.0
    n_loss = n_kl = 0
    for b in range(0, len(windows), batch_size):
        ids, mask = pad_windows(windows[b:b + batch_size], lm.tokenizer.pad_id)
        where = mask.copy()
        where[:, 0] = False
        loss_mask = where[:, :-1] & mask[:, 1:]
        ids_j, mask_j, where_j = jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(where)
        clean = lm.logits(ids_j, mask_j)
        for name, (fn, make_args) in edits.items():
            edited = lm.logits(ids_j, mask_j, edits={hook: (fn, make_args(where_j))})
            ce_c, ce_e, kl = jax.device_get(token_losses(clean, edited, ids_j))
            sums[name][0] += float(np.sum(ce_e[loss_mask], dtype=np.float64))
            sums[name][1] += float(np.sum(kl[where], dtype=np.float64))
        ce_clean_sum += float(np.sum(ce_c[loss_mask], dtype=np.float64))
        n_loss += int(loss_mask.sum())
        n_kl += int(where.sum())
        if progress is not None:
            progress(int(mask.sum()))
    if n_loss == 0:
        raise ValueError("the windows hold no position with a next token to predict (too short)")
    out: dict[str, Any] = {"ce_clean": ce_clean_sum / n_loss, "n_loss_tokens": n_loss, "n_kl_tokens": n_kl}
    for name, (ce, kl) in sums.items():
        out[name] = {"ce": ce / n_loss, "kl": kl / max(n_kl, 1)}
    return out


def splice_edit(sae: SAE) -> tuple[str, EditFn]:
    """(hook, edit fn) that splices `sae` into the LM: an SAE replaces its hook by its reconstruction;
    a transcoder replaces its target hook (mlp_out.L) by its prediction from its input hook
    (mlp_in.L) of the same layer. The edit takes (params, where)."""
    if sae.hook is None:
        raise ValueError("the SAE records no hook; load it with hook='resid_post.L'")
    if not sae.cfg.is_transcoder:
        return sae.hook, reconstruction_edit(sae.cfg)
    target = sae.target_hook
    if target is None:
        raise ValueError(f"transcoder {sae.source} records no target hook (e.g. mlp_out.9); load it with "
                         "target_hook set")
    (in_kind, in_layer), (out_kind, out_layer) = (h.rsplit(".", 1) for h in (sae.hook, target))
    if in_layer != out_layer:
        raise ValueError(f"transcoder from {sae.hook} to {target}: splicing needs both hooks in one block")
    return target, transcoder_replacement_edit(sae.cfg, in_kind)


def sae_splice_metrics(lm, sae: SAE, windows: Sequence[Sequence[int]], batch_size: int = 2,
                       progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """delta_ce, ce_recovered and kl of `sae` spliced at its hook (DESIGN §4 definitions). A
    transcoder replaces the MLP's output (its target hook) by its prediction, and the baseline of
    ce_recovered zero-ablates that output (the MLP removed)."""
    hook, fn = splice_edit(sae)
    sae.check_compatible(lm.name, None, "language model")
    if lm.config.d_model != sae.d_in or lm.config.d_model != sae.d_out:
        raise ValueError(f"SAE d_in={sae.d_in}, d_out={sae.d_out} but the language model's width is "
                         f"{lm.config.d_model}")
    params = sae.params
    edits = {
        "sae": (fn, lambda where: (params, where)),
        "zero": (zero_ablation_edit, lambda where: where),
    }
    r = compare_edits(lm, hook, windows, edits, batch_size, progress)
    ce_clean, ce_sae, ce_zero = r["ce_clean"], r["sae"]["ce"], r["zero"]["ce"]
    return {
        "delta_ce": ce_sae - ce_clean,
        "ce_recovered": (ce_zero - ce_sae) / (ce_zero - ce_clean) if ce_zero != ce_clean else float("nan"),
        "kl": r["sae"]["kl"],
        "ce_clean": ce_clean,
        "ce_sae": ce_sae,
        "ce_zero_ablation": ce_zero,
        "kl_zero_ablation": r["zero"]["kl"],
        "n_text_tokens": r["n_kl_tokens"],
        "n_loss_tokens": r["n_loss_tokens"],
    }
