"""Plan the harvest (the LM forward pass up to the hooked layer) for a TPU slice: the other half of a
pod's time. Compiles `jaxdict.lm.model.forward` for the Gemma 3 family's published shapes with
abstract weights — nothing is downloaded.

Two layouts: "replicated" is what `jaxdict harvest` does today (jaxdict/harvest.py: blocks
replicated on every device, the embedding split over `data` along the vocabulary, windows split
over `data`); "model" splits each block's heads and FFN width over a `model` axis (Megatron-style
tensor parallelism, Shoeybi et al. 2019) for models whose blocks do not fit one chip — the planner
shows what it would cost; the harvester does not implement it yet.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdict.lm import model as lm_model
from jaxdict.lm.config import GEMMA3_PUBLISHED, Gemma3Config
from jaxdict.plan.analysis import ProgramCost, analyse, shard_bytes
from jaxdict.plan.chips import Topology
from jaxdict.plan.devices import topology_devices
from jaxdict.plan.roofline import Roofline, roofline
from jaxdict.plan.train_plan import is_out_of_memory
from jaxdict.sae.config import ConfigError

_LAYER_SPECS = {  # "model" layout: heads and FFN width over the model axis
    "attn_norm": P(), "q": P(None, "model", None), "k": P(None, "model", None), "v": P(None, "model", None),
    "q_norm": P(), "k_norm": P(), "o": P("model", None, None), "post_attn_norm": P(), "ffn_norm": P(),
    "gate": P(None, "model"), "up": P(None, "model"), "down": P("model", None), "post_ffn_norm": P(),
}


@dataclasses.dataclass(frozen=True)
class HarvestPlan:
    model: str
    topology: Topology
    layout: str
    mesh_shape: tuple[int, int]
    batch: int
    context: int
    layer: int
    cost: ProgramCost | None
    roofline: Roofline | None
    error: str = ""

    @property
    def fits(self) -> bool:
        return self.cost is not None and self.cost.memory.fits


def gemma_config(name: str) -> Gemma3Config:
    if name not in GEMMA3_PUBLISHED:
        raise ConfigError(f"unknown model {name!r}; valid: {', '.join(GEMMA3_PUBLISHED)}")
    return GEMMA3_PUBLISHED[name]


def abstract_params(c: Gemma3Config, n_blocks: int, dtype) -> dict:
    d, H, K, hd, f = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim
    s = functools.partial(jax.ShapeDtypeStruct, dtype=dtype)
    layer = {"attn_norm": s((d,)), "q": s((d, H, hd)), "k": s((d, K, hd)), "v": s((d, K, hd)),
             "q_norm": s((hd,)), "k_norm": s((hd,)), "o": s((H, hd, d)), "post_attn_norm": s((d,)),
             "ffn_norm": s((d,)), "gate": s((d, f)), "up": s((d, f)), "down": s((f, d)), "post_ffn_norm": s((d,))}
    return {"embed": s((c.vocab_size, d)), "final_norm": s((d,)), "layers": [dict(layer) for _ in range(n_blocks)]}


def _param_shardings(c: Gemma3Config, mesh: Mesh, layout: str, n_blocks: int) -> dict:
    n_data = mesh.shape["data"]
    embed = P("data", None) if c.vocab_size % n_data == 0 else P()  # as jaxdict/harvest.py places it
    if layout == "model":
        n_model = mesh.shape["model"]
        if c.n_kv_heads % n_model or c.n_heads % n_model or c.ffn_dim % n_model:
            raise ConfigError(f"model axis {n_model} must divide the heads ({c.n_heads}, kv {c.n_kv_heads}) "
                              f"and FFN width ({c.ffn_dim})")
        layer = {k: NamedSharding(mesh, v) for k, v in _LAYER_SPECS.items()}
    else:
        layer = {k: NamedSharding(mesh, P()) for k in _LAYER_SPECS}
    return {"embed": NamedSharding(mesh, embed), "final_norm": NamedSharding(mesh, P()),
            "layers": [dict(layer) for _ in range(n_blocks)]}


def plan_harvest(model: str, topology: Topology, *, batch: int, context: int, layer: int | None = None,
                 layout: str = "replicated", n_model: int = 1, dtype: str = "bfloat16") -> HarvestPlan:
    """Compile the harvest forward pass of `model` (through block `layer`, default the middle one)
    for `topology`: `batch` windows of `context` tokens per step, split over the data axis."""
    c = gemma_config(model)
    layer = c.n_layers // 2 if layer is None else layer
    if not 0 <= layer < c.n_layers:
        raise ConfigError(f"layer {layer}: {model} has layers 0..{c.n_layers - 1}")
    if layout not in ("replicated", "model"):
        raise ConfigError(f"harvest layout {layout!r}; valid: replicated, model")
    devices = topology_devices(topology)
    n_model = n_model if layout == "model" else 1
    if len(devices) % n_model:
        raise ConfigError(f"model axis {n_model} does not divide the {len(devices)} chips of {topology.name}")
    n_data = len(devices) // n_model
    if batch % n_data:
        raise ConfigError(f"batch {batch} is not divisible by the data axis ({n_data}); "
                          f"use a multiple of {n_data}, e.g. {-(-batch // n_data) * n_data}")
    mesh = Mesh(np.asarray(devices, dtype=object).reshape(n_data, n_model), ("data", "model"))
    n_blocks = layer + 1
    params = abstract_params(c, n_blocks, jnp.dtype(dtype))
    shardings = _param_shardings(c, mesh, layout, n_blocks)
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), params, shardings)
    rows = NamedSharding(mesh, P("data", None))
    ids = jax.ShapeDtypeStruct((batch, context), jnp.int32, sharding=rows)
    mask = jax.ShapeDtypeStruct((batch, context), jnp.bool_, sharding=rows)

    def forward(params, ids, mask):
        hooks, _, _ = lm_model.forward(params, ids, mask, (), config=c, n_blocks=n_blocks, hook_layers=(layer,),
                                       edit_spec=(), with_logits=False)
        return hooks[layer]

    out_sharding = NamedSharding(mesh, P("data", None, None))
    lowered = jax.jit(forward, out_shardings=out_sharding).lower(params, ids, mask)
    parts = {"weights": shard_bytes(params), "token ids + mask": shard_bytes((ids, mask))}
    shape = (n_data, n_model)
    try:
        compiled = lowered.compile()
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        return HarvestPlan(model, topology, layout, shape, batch, context, layer, None, None,
                           error=str(err).splitlines()[0])
    cost = analyse(compiled, parts, topology.chip.hbm_bytes, devices)
    return HarvestPlan(model, topology, layout, shape, batch, context, layer, cost,
                       roofline(cost, topology.chip, dtype, batch * context))
