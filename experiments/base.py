"""Shared bases of every experiment: the real setting (Gemma 3 270M, middle-layer residual stream,
harvested by `jaxdict harvest`) and a tiny CPU setting (planted-dictionary data), plus `derive`,
which builds a named point from a base with `dataclasses.replace`.

    derive(TINY, "F256", sae__n_features=256, optim__total_steps=200)
"""
from __future__ import annotations

import dataclasses

from jaxdict.sae.config import SAEConfig
from jaxdict.train.config import DataConfig, MeshConfig, RunConfig, RunSettings
from jaxdict.train.optim import OptimConfig

# The store written by `jaxdict harvest` for the embedded default (resid_post.9 is the middle of
# Gemma 3 270M's 18 blocks); override with --set data.store=... for another store.
GEMMA_STORE = "runs/stores/gemma3-270m-stdlib/resid_post.9"

BASE = RunConfig(
    # Scaling Monosemanticity recipe (Templeton et al. 2024; April 2024 update): ReLU-L1 with
    # inputs scaled to E‖x‖² = d_in. They used λ = 5; on this store λ = 5 switches every latent
    # off (its mean is ~93 % of E‖x‖², leaving ~7 % of d_in as variance), so the base takes λ = 1
    # and lr 1e-3, measured to train well in 250-2000 steps (experiments/results/README.md).
    sae=SAEConfig(arch="relu_l1", d_in=640, n_features=4096, l1_coeff=1.0),
    optim=OptimConfig(lr=1e-3, total_steps=2000),
    # The default store is Python's standard library: ~220 documents (source files), so 5 % of
    # documents are held out to get tens of thousands of evaluation rows.
    data=DataConfig(source="store", store=GEMMA_STORE, model="gemma3-270m", hook="resid_post.9",
                    batch_size=1024, eval_fraction=0.05, eval_rows=16384),
    mesh=MeshConfig(),
    run=RunSettings(name="base", log_every=50, checkpoint_every=500, eval_every=0),
)

TINY = RunConfig(
    sae=SAEConfig(arch="relu_l1", d_in=32, n_features=128, l1_coeff=5.0),
    optim=OptimConfig(lr=1e-3, total_steps=100),
    data=DataConfig(source="planted", batch_size=64, planted_rows=16384, planted_features=64,
                    eval_fraction=0.05, eval_rows=512, slab_rows=256, shuffle_buffer_rows=2048),
    mesh=MeshConfig(),
    run=RunSettings(name="tiny", log_every=25, checkpoint_every=50, eval_every=0),
)


def derive(cfg: RunConfig, name: str, **changes) -> RunConfig:
    """`cfg` renamed to `name` with `section__field=value` changes (e.g. sae__k=32)."""
    sections: dict[str, dict] = {}
    for key, value in changes.items():
        section, sep, field = key.partition("__")
        if not sep or not hasattr(cfg, section):
            raise ValueError(f"derive: {key!r} is not SECTION__FIELD (sections: sae, optim, data, mesh, run)")
        sections.setdefault(section, {})[field] = value
    sections.setdefault("run", {})["name"] = name
    return dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s), **f) for s, f in sections.items()})


CONFIGS = {"base": BASE, "tiny": TINY}
