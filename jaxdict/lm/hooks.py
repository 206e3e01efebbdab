"""Hook points of a Gemma 3 block: where each sits relative to the block's four norms.

A Gemma 3 block (Gemma 3 report; llama.cpp `llm_build_gemma3`) with residual input x:

    resid_pre.L  = x                                          block input (= resid_post.L-1)
    attn_out.L   = post_attn_norm(attention(pre_attn_norm(x)))   what attention adds
    resid_mid.L  = resid_pre.L + attn_out.L
    mlp_in.L     = pre_ffn_norm(resid_mid.L)                  what the MLP reads, norm weight included
    mlp_out.L    = post_ffn_norm(down(gelu_tanh(gate·h) * up·h)), h = mlp_in.L   what the MLP adds
    resid_post.L = resid_mid.L + mlp_out.L                    block output

so resid_post.L = resid_pre.L + attn_out.L + mlp_out.L exactly. Every norm weight here is the full
multiplier (1 + w) (the GGUF stores it with the 1 added; jaxdict.lm.model's params do too).

An *edit* at a hook point replaces that value inside the forward pass: an edit at attn_out.L or
mlp_out.L changes what is added to the residual (a transcoder's output replaces the MLP's), one at
mlp_in.L changes what the MLP reads, one at a resid_* point changes the residual stream itself.
"""
from __future__ import annotations

import re
from typing import NamedTuple

# In the order they occur inside a block.
HOOK_KINDS = ("resid_pre", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post")
_HOOK = re.compile(r"([a-z_]+)\.(-?\d+)")


class HookPoint(NamedTuple):
    """One hook point: its kind (one of HOOK_KINDS) and its block index."""

    kind: str
    layer: int

    @property
    def name(self) -> str:
        return f"{self.kind}.{self.layer}"


def parse_hook_point(hook: str, n_layers: int) -> HookPoint:
    """`kind.L` -> HookPoint, with kind in HOOK_KINDS and 0 <= L < n_layers."""
    valid = f"valid hooks are KIND.L with KIND one of {', '.join(HOOK_KINDS)} and L in 0..{n_layers - 1}"
    m = _HOOK.fullmatch(hook) if isinstance(hook, str) else None
    if m is None or m.group(1) not in HOOK_KINDS:
        raise ValueError(f"unknown hook {hook!r}; {valid}")
    layer = int(m.group(2))
    if not 0 <= layer < n_layers:
        raise ValueError(f"hook {hook!r}: layer {layer} out of range; valid layers are 0..{n_layers - 1}")
    return HookPoint(m.group(1), layer)


def parse_hook(hook: str, n_layers: int) -> int:
    """Block index of a hook name `KIND.L` (any kind of HOOK_KINDS); the blocks 0..L must run."""
    return parse_hook_point(hook, n_layers).layer
