"""Cross-layer transcoder runs (`jaxdict train --config experiments/clt.py:NAME`): a RunConfig with a
`clt` section; data.store is the folder of one harvest of every CLT hook,

    jaxdict harvest --hook resid_mid.0 … --hook resid_mid.17 --hook mlp_out.0 … --hook mlp_out.17

(stores resid_mid.l and mlp_out.l inside it, row-aligned). Override fields with --set, e.g.
--set clt.n_features=2048 --set data.store=runs/stores/clt.

gemma: Gemma 3 270M, all 18 layers, d_model 640, 1,024 features per layer (issue 17's 1–4k), BatchTopK
(fast, exported to circuit-tracer as JumpReLU at its learned threshold) with k = 32 per layer.
gemma_topk / gemma_plt: the CLT of issue 17's report and its per-layer-transcoder baseline (below).
tiny: planted cross-layer data (jaxdict.clt.planted), 3 layers, for a CPU smoke run.
"""
from __future__ import annotations

from base import derive  # noqa: F401  (experiments share base.py; derive builds variants)

from jaxdict.clt.config import CLTConfig
from jaxdict.train.config import DataConfig, MeshConfig, RunConfig, RunSettings
from jaxdict.train.optim import OptimConfig

GEMMA_CLT_STORES = "runs/stores/gemma3-270m-clt"

GEMMA = RunConfig(
    clt=CLTConfig(n_layers=18, d_model=640, n_features=1024, arch="batchtopk", k=32),
    optim=OptimConfig(lr=2e-4, total_steps=1000),
    data=DataConfig(source="store", store=GEMMA_CLT_STORES, model="gemma3-270m", batch_size=512,
                    eval_fraction=0.05, eval_rows=8192),
    mesh=MeshConfig(),
    run=RunSettings(name="gemma_clt", log_every=20, checkpoint_every=200),
)

TINY = RunConfig(
    clt=CLTConfig(n_layers=3, d_model=16, n_features=64, arch="jumprelu", sparsity_coeff=1e-3),
    optim=OptimConfig(lr=1e-3, total_steps=100),
    data=DataConfig(source="planted", batch_size=64, planted_rows=8192, planted_features=16, eval_fraction=0.05,
                    eval_rows=512, slab_rows=256, shuffle_buffer_rows=2048),
    mesh=MeshConfig(),
    run=RunSettings(name="clt_tiny", log_every=25, checkpoint_every=50),
)

# Issue 17 item 6, sized for a 2-core CPU: one pass over a 98,304-token harvest of the 36 hooks
# (~93k training rows after the 5 % held-out documents: 90 steps of 1,024), TopK k = 32 per layer with
# the sparse decode, 1,024 features per layer; lr 1e-3 with a 10-step warm-up (a short run).
# gemma_plt is the same run with each feature writing only to its own layer (decoder_span 1):
# per-layer transcoders on resid_mid.l of the same total width (18 × 1,024), trained by the same
# code on the same rows. Results: experiments/results/clt.md.
GEMMA_TOPK = derive(GEMMA, "gemma_clt_topk", clt__arch="topk", clt__decode="sparse", clt__k=32,
                    optim__lr=1e-3, optim__total_steps=90, optim__lr_warmup_steps=10, data__batch_size=1024,
                    run__log_every=10, run__checkpoint_every=30)
GEMMA_PLT = derive(GEMMA_TOPK, "gemma_plt_topk", clt__decoder_span=1)

CONFIGS = {"gemma": GEMMA, "gemma_topk": GEMMA_TOPK, "gemma_plt": GEMMA_PLT, "tiny": TINY}
