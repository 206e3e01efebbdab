"""Planning a cross-layer transcoder (jaxdict/clt/) for a TPU slice: the run config `jaxdict plan
--clt MODEL` builds, the closed-form per-device state and the kernel FLOPs the plan reports beside
the compiled ones. The step compiled is the one `jaxdict train` runs for a CLT config
(jaxdict.clt.train_step.build_clt_step; jaxdict.plan.train_plan.lower_train_step dispatches to it).

Gemma Scope 2's CLT widths (McDougall et al. 2025, "Gemma Scope 2"; the release announcement,
greaterwrong.com/posts/YQro5LyYjDzZrBCdb, lists "CLTs on 270m & 1b"). The released folders are
`clt/width_262k_l0_{medium,big}[_affine]` in google/gemma-scope-2-{270m,1b}-{pt,it} (the path
circuit-tracer's own Gemma 3 tests load). "262k" is the *total* over layers: a public third-party
loader of the 1B release states 10,080 features per layer × 26 layers = 262,080 (and 20,160 per
layer for a 524k folder), which matches the 30.37 GiB it reports for the float32 files (per layer
w_enc [d, F] + w_dec [F, L, d]: 26·1152·27·10,080·4 B = 30.37 GiB). We found no stated per-layer
count for 270M: 14,560 = 262,080 / 18 (the same total as 1B's) is an ASSUMPTION.
"""
from __future__ import annotations

import dataclasses

from jaxdict.clt.config import CLTConfig
from jaxdict.sae.config import ConfigError
from jaxdict.train.config import DataConfig, MeshConfig, RunConfig, RunSettings

# features per layer; see the module docstring for what is sourced and what is assumed
GEMMA_SCOPE_2_CLT_WIDTHS: dict[str, dict[str, int]] = {
    "gemma3-270m": {"262k": 14_560},  # ASSUMED per-layer split of the 262k total
    "gemma3-1b": {"262k": 10_080, "524k": 20_160},
}


def clt_model_shape(model: str) -> tuple[int, int]:
    """(n_layers, d_model) of a Gemma 3 model from its published config (jaxdict.lm.config)."""
    from jaxdict.lm.config import GEMMA3_PUBLISHED

    if model not in GEMMA3_PUBLISHED:
        raise ConfigError(f"--clt {model!r}: unknown model; valid: {', '.join(GEMMA3_PUBLISHED)}")
    c = GEMMA3_PUBLISHED[model]
    return c.n_layers, c.d_model


def parse_width(model: str, text: str | int) -> int:
    """Features per layer: an int, or a Gemma Scope 2 width name of `model` ("262k")."""
    if isinstance(text, int):
        return text
    names = GEMMA_SCOPE_2_CLT_WIDTHS.get(model, {})
    if text in names:
        return names[text]
    try:
        value = int(text)
    except ValueError:
        valid = ", ".join(names) or "none"
        raise ConfigError(f"--clt-features {text!r}: expected features per layer (an int) or a Gemma Scope 2 "
                          f"CLT width of {model} ({valid})") from None
    if value < 1:
        raise ConfigError(f"--clt-features {text!r}: must be >= 1")
    return value


def clt_run_config(model: str, n_features: int, *, arch: str = "jumprelu", k: int | None = None,
                   batch_size: int = 4096, data: int | None = None, model_axis: int = 1) -> RunConfig:
    """A CLT run over every layer of `model` (float32 rows from the 2L stores, as `jaxdict train`)."""
    n_layers, d_model = clt_model_shape(model)
    if arch == "jumprelu":
        k = None
    elif k is None:
        raise ConfigError(f"--clt-arch {arch}: needs --k (active features per token per layer)")
    clt = CLTConfig(n_layers=n_layers, d_model=d_model, n_features=n_features, arch=arch, k=k,
                    decode="sparse" if arch == "topk" else "dense")
    data_cfg = DataConfig(source="store", store=f"runs/stores/{model}-clt", model=model, batch_size=batch_size)
    return RunConfig(clt=clt, data=data_cfg,
                     mesh=MeshConfig(data=data, model=model_axis),
                     run=RunSettings(name=f"clt-{model}-{n_features}"))


def clt_state_bytes(cfg: CLTConfig, n_model: int) -> dict[str, float]:
    """Per-device params (jaxdict.clt.params.bytes_per_device: encoders L·d·F + decoders
    L(L+1)/2·F·d + b_enc/threshold L·F, over `model`; b_dec L·d replicated) and Adam's two moments."""
    from jaxdict.clt.params import bytes_per_device

    if cfg.n_features % n_model:
        valid = [m for m in (1, 2, 4, 8, 16, 32, 64) if cfg.n_features % m == 0]
        raise ConfigError(f"clt.n_features = {cfg.n_features} is not divisible by the model axis {n_model}; "
                          f"valid model axes divide it, e.g. {valid}")
    params = float(bytes_per_device(cfg, n_model))
    return {"params": params, "optimiser state": 2 * params}


def clt_step_flops(cfg: RunConfig) -> float:
    """Kernel FLOPs of one CLT step over the whole batch (jaxdict.clt.bench.step_flops)."""
    from jaxdict.clt.bench import step_flops

    return step_flops(cfg.clt, cfg.data.batch_size)


def with_mesh(cfg: RunConfig, data: int | None, model: int) -> RunConfig:
    return dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, data=data, model=model))


def clt_line(cfg: RunConfig, sweep: int | None) -> str:
    c = cfg.clt
    k = f" k={c.k}" if c.k is not None else ""
    sw = f", sweep axis of {sweep}" if sweep else ""
    return (f"CLT {c.arch}{k} ({c.decode} decode): {c.n_layers} layers, d_model {c.d_model}, {c.n_features:,} "
            f"features per layer ({c.n_layers * c.n_features:,} in all), {c.n_decoder_blocks} decoder blocks, "
            f"batch {cfg.data.batch_size}, float32{sw}")
