"""Transcoders on Gemma 3 270M layer 9 (issue 16 item 3): the MLP's input `mlp_in.9` encoded, its
output `mlp_out.9` reconstructed, with and without a skip connection, on stores harvested in one
forward pass:

    jaxdict harvest --hook mlp_in.9 --hook mlp_out.9 --dtype bfloat16 --tokens 622592 --out runs/stores/tc
    jaxdict train --config experiments/transcoders.py:transcoder --out runs/tc/transcoder
    jaxdict train --config experiments/transcoders.py:skip_transcoder --out runs/tc/skip_transcoder
    jaxdict eval runs/tc/skip_transcoder --out runs/tc/skip_transcoder/eval    # fvu of mlp_out, delta_ce

TopK, F 4096, k 32 (the quality table's width and L0, experiments/quality.py), batch 1024, lr 1e-3
(base.py), 550 steps (563k tokens: the stores hold 622,592 rows, a harvest stopped early on this CPU),
AuxK on latents dead for 100 steps, 5 % of documents held out. The input and target are each scaled to E‖s·x‖² = 640 on
their own (a transcoder's input_scale is (s_in, s_out), folded into the weights on load/export).
"""
from __future__ import annotations

from base import BASE, derive

TC_STORES = "runs/stores/tc"

TRANSCODER = derive(BASE, "transcoder", sae__arch="topk", sae__k=32, sae__n_features=4096, sae__d_out=640,
                    data__store=f"{TC_STORES}/mlp_in.9", data__hook="mlp_in.9",
                    data__target_store=f"{TC_STORES}/mlp_out.9", data__target_hook="mlp_out.9",
                    # A dead window scaled to the run (Gao et al.'s 10M tokens is longer than it):
                    # 100 steps of 1024 tokens, as issue 18's AuxK runs.
                    sae__dead_tokens=102_400, optim__total_steps=550, run__checkpoint_every=275)
SKIP_TRANSCODER = derive(TRANSCODER, "skip_transcoder", sae__skip_connection=True)

CONFIGS = {"transcoder": TRANSCODER, "skip_transcoder": SKIP_TRANSCODER}
