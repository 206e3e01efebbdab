"""circuit-tracer transcoder sets built in memory (torch), for what its files cannot express.

circuit-tracer 0.5.0 builds a transcoder's activation from its file: JumpReLU when the file has
`activation_function.threshold`, else ReLU. A TopK transcoder therefore has no file form (the
exporter, jaxdict.sae.circuit_tracer_io, refuses it), and circuit-tracer's own TopK class keeps the
k largest pre-activations without a ReLU, which differs from ours (Gao et al. 2024's TopK, ReLU'd)
on any token with fewer than k positive pre-activations. `transcoder_set` builds the
TranscoderSet directly, with `ReluTopK` for TopK, so the set computes exactly jaxdict's features;
pass it to `ReplacementModel.from_pretrained_and_transcoders`. Needs torch and circuit-tracer.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jaxdict.sae.circuit_tracer_io import INPUT_HOOKS, OUTPUT_HOOK, THRESHOLD_KEY, layer_tensors
from jaxdict.sae.raw_transcoder import RawTranscoder


class ReluTopK(nn.Module):
    """Keep each row's k largest pre-activations, then ReLU: jaxdict's TopK (ties at the k-th value
    may keep a different one of the tied latents than jaxdict's lax.top_k; measure-zero on real data)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = int(k)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        values, indices = torch.topk(z, k=self.k, dim=-1)
        return torch.zeros_like(z).scatter(-1, indices, F.relu(values))


def _activation(raw: RawTranscoder | None, tensors: dict[str, np.ndarray]):
    from circuit_tracer.transcoder.activation_functions import JumpReLU

    if raw is not None and raw.arch == "topk":
        return ReluTopK(raw.fields["k"])
    if THRESHOLD_KEY in tensors:
        return JumpReLU(torch.from_numpy(tensors[THRESHOLD_KEY].copy()), 0.1)
    return F.relu


def transcoder_set(transcoders: Mapping[int, RawTranscoder], *, n_layers: int, input_hook: str = "mlp.hook_in",
                   norm_weights: Mapping[int, np.ndarray] | None = None, scan: str = "jaxdict"):
    """A circuit_tracer TranscoderSet (float32, CPU) of `transcoders` ({layer: RawTranscoder}, any
    arch, TopK included), the model's other layers inert, hooks as export_circuit_tracer writes them."""
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder, TranscoderSet

    tensors = layer_tensors(transcoders, input_hook=input_hook, norm_weights=norm_weights,
                            pad_missing_layers=True, n_layers=n_layers, allow_topk=True)
    modules = {}
    for layer, t in tensors.items():
        d_tc, d_model = t["W_enc"].shape
        tc = SingleLayerTranscoder(d_model, d_tc, _activation(transcoders.get(layer), t), layer,
                                   skip_connection="W_skip" in t, device=torch.device("cpu"), dtype=torch.float32)
        tc.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in t.items()})
        modules[layer] = tc
    assert input_hook in INPUT_HOOKS  # layer_tensors checked it
    return TranscoderSet(modules, feature_input_hook=input_hook, feature_output_hook=OUTPUT_HOOK, scan=scan)


def restore_per_layer_rope(model) -> None:
    """Undo circuit-tracer 0.5.0's `_deduplicate_attention_buffers` on a TransformerLens-backend
    ReplacementModel, which gives every block the last block's RoPE tables: Gemma 3's local layers
    use base 10^4 and its global layers 10^6 (TransformerLens's `_rotary_base`), so one shared table
    is wrong for one kind (layer-9 features off by up to 3.8 on Gemma 3 270M; exact after this)."""
    for block in model.blocks:
        attn = block.attn
        attn.rotary_sin, attn.rotary_cos = attn.calculate_sin_cos_rotary(
            attn.cfg.rotary_dim, attn.rotary_sin.shape[0], base=attn._rotary_base(), dtype=attn.cfg.dtype)
