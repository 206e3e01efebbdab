"""The demo SAE of the steering evaluation (issue 15): TopK, F = 16,384, k = 32, on Gemma 3 270M's
`resid_post.9` (the middle of its 18 blocks), 2,048 steps × 1,024 rows = 2.10M training tokens of
the default corpus (the standard library's own source: code plus its docstrings and comments; its
token composition is measured by experiments/corpus_composition.py).

    jaxdict harvest --hook resid_post.9 --tokens 2000000 --out /work/stores/gemma-l9
    jaxdict train --config experiments/demo_sae.py:demo \
        --set data.store=/work/stores/gemma-l9/resid_post.9 --out runs/demo-sae

TopK (Gao et al. 2024) because it needs no sparsity coefficient tuned to this store and its
sparse decoder is the fastest path on a CPU (decode=auto picks sparse at k ≤ F/64; BENCHMARKS.md).
k = 32: a common TopK sparsity at this width. lr 4e-4 with a 50-step warm-up: our choice for a
single 2k-step run (no lr sweep was run for it; its fvu curve is in
experiments/results/steering_unsafe_code.md). 5 % of documents are held out (base.py).
"""
from base import BASE, derive

DEMO = derive(BASE, "demo-sae-topk-f16384-k32", sae__arch="topk", sae__n_features=16384, sae__k=32,
              optim__lr=4e-4, optim__lr_warmup_steps=50, optim__total_steps=2048,
              data__batch_size=1024, run__checkpoint_every=256, run__log_every=32)

# What this session could afford on a shared 2-core CPU (load average ~20, the store still being
# harvested): F = 4,096, 768 steps × 256 rows = 197k training tokens. Used for the committed
# steering reports, which say so; the `demo` recipe above is the one the issue asks for.
DEMO_CPU = derive(BASE, "demo-sae-topk-f4096-k32-cpu", sae__arch="topk", sae__n_features=4096, sae__k=32,
                  optim__lr=4e-4, optim__lr_warmup_steps=50, optim__total_steps=768,
                  data__batch_size=256, data__eval_rows=4096, run__checkpoint_every=128, run__log_every=32)

CONFIGS = {"demo": DEMO, "demo-cpu": DEMO_CPU}
