"""The runs behind experiments/results/quality.md: every architecture at a given L0 on the Gemma store,
and the planted-dictionary check, each with one shared command plus the architecture's L0 knob.

    jaxdict train --config experiments/quality.py:gemma --set sae.arch=topk --set sae.k=32 --out runs/q/topk-32
    jaxdict train --config experiments/quality.py:gemma --set sae.arch=jumprelu --set sae.target_l0=32 --out ...
    jaxdict train --config experiments/quality.py:planted --set sae.arch=jumprelu --set sae.target_l0=6 --out ...

`gemma`: F 4096, batch 1024, 1000 steps (1.02M tokens of the Gemma 3 270M resid_post.9 store), lr 1e-3
(base.py's, measured to train well in 250-2000 steps). `planted`: d_in 128, F 1024, batch 1024, 3000
steps, lr 1e-3 (the setting of issue 14) on a store made by experiments/planted_data.py.
"""
from __future__ import annotations

from base import BASE, derive

GEMMA = derive(BASE, "quality-gemma", sae__n_features=4096, optim__total_steps=1000, run__checkpoint_every=0)

PLANTED_STORE = "runs/planted/store"
PLANTED = derive(BASE, "quality-planted", sae__d_in=128, sae__n_features=1024, optim__total_steps=3000,
                 data__store=PLANTED_STORE, data__model="", data__hook="", data__eval_rows=16384,
                 run__checkpoint_every=0, run__log_every=100)

CONFIGS = {"gemma": GEMMA, "planted": PLANTED}
