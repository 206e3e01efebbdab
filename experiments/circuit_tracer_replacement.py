"""A trained jaxdict transcoder inside circuit-tracer's replacement model (issue 16 item 5, stretch).

    python experiments/circuit_tracer_replacement.py runs/tc/transcoder [HF_FOLDER]

Writes the embedded Gemma 3 270M as a Hugging Face folder (jaxdict.lm.hf_writer), loads it in
circuit-tracer 0.5.0's TransformerLens-backend ReplacementModel with the run's transcoder at its layer
(in memory: jaxdict.sae.circuit_tracer_torch, so TopK works; input hook ln2.hook_normalized with the
pre-FFN norm folded in; other layers inert; per-layer RoPE restored), and compares the features it
computes inside the model with jaxdict's encode of jaxdict's own mlp_in on the same tokens. Then it
builds one attribution graph. Results: experiments/results/circuit_tracer_replacement.md.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local
TEXTS = ["The capital of France is Paris, and the capital of Germany is Berlin.",
         "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
         "In 1969, Neil Armstrong became the first person to walk on the Moon."]


def main(run: str, hf_folder: str | None) -> None:
    import huggingface_hub.constants as hub_constants
    import jax.numpy as jnp
    import torch

    if not hasattr(hub_constants, "HF_HUB_ENABLE_HF_TRANSFER"):  # see tests/test_circuit_tracer.py
        hub_constants.HF_HUB_ENABLE_HF_TRANSFER = False
    from circuit_tracer import attribute
    from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
    from transformers import AutoTokenizer, Gemma3ForCausalLM

    import jaxdict.lm
    from jaxdict.lm.hf_writer import write_hf_folder
    from jaxdict.sae.circuit_tracer_torch import restore_per_layer_rope, transcoder_set
    from jaxdict.sae.io import HF_MODEL_IDS, load_sae
    from jaxdict.sae.raw_transcoder import raw_from_sae

    sae = load_sae(run)
    raw = raw_from_sae(sae)
    layer = int(re.fullmatch(r"mlp_in\.(\d+)", raw.input_hook).group(1))
    lm = jaxdict.lm.load(sae.model)
    folder = write_hf_folder(lm, hf_folder or tempfile.mkdtemp(prefix="hf-"))
    hf = Gemma3ForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    ts = transcoder_set({layer: raw}, n_layers=lm.config.n_layers, input_hook="ln2.hook_normalized",
                        norm_weights={layer: np.asarray(lm.params["layers"][layer]["ffn_norm"])})
    model = TransformerLensReplacementModel.from_pretrained_and_transcoders(
        HF_MODEL_IDS.get(sae.model, sae.model), ts, hf_model=hf, tokenizer=AutoTokenizer.from_pretrained(str(folder)),
        device="cpu", dtype=torch.float32)
    restore_per_layer_rope(model)
    print(f"{run} (step {sae.step}): {raw.fields}, {raw.input_hook} -> {raw.output_hook}")
    for text in TEXTS:
        ids = lm.tokenizer.encode(text)
        x = np.asarray(lm.activations(jnp.asarray([ids], jnp.int32), raw.input_hook))[0]
        f = np.array(sae.encode(x))
        f[0] = 0  # circuit-tracer zeroes the BOS position's features
        _, acts = model.get_activations(torch.tensor([ids]))
        diff = np.abs(acts[layer].numpy() - f).max()
        print(f"{len(ids)} tokens: max|Δf| {diff:.2e} (max f {np.abs(f).max():.1f}), same active set "
              f"{np.array_equal(acts[layer].numpy() > 0, f > 0)}")
    start = time.time()
    graph = attribute(torch.tensor(lm.tokenizer.encode(TEXTS[0][:31])), model, max_n_logits=3, batch_size=64)
    print(f"attribution graph: {graph.adjacency_matrix.shape[0]} nodes, {graph.active_features.shape[0]} "
          f"active features, all finite {bool(torch.isfinite(graph.adjacency_matrix).all())}, "
          f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
