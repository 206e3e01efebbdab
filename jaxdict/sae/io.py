"""Load SAEs (training runs, SAELens folders, Gemma Scope params.npz) and export to SAELens.

Every loader returns an `SAE` whose parameters act on raw activations. Layouts:

- training run (layout and format versions: `jaxdict.run_layout`): `<run>/config.json`
  ({"sae": SAEConfig fields, "data": {"model", "hook", ...}}) and its checkpoints; only the
  `params` item is read (W_enc, b_enc, W_dec, b_dec, [threshold], input_scale — trained on
  x · input_scale), onto one device, whatever mesh wrote it.
- SAELens: `cfg.json` + `sae_weights.safetensors` (W_enc [d, F], b_enc, W_dec [F, d], b_dec,
  [threshold]); the encoder computes (x − b_dec·apply_b_dec_to_input) W_enc + b_enc.
- Gemma Scope: `params.npz` of a JumpReLU with no pre-encoder bias (Lieberum et al. 2024).

This module imports no training code (no optax, no grain): evaluation jobs load checkpoints
without the trainer.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxdict import run_layout as layout
from jaxdict.sae.config import SAEConfig
from jaxdict.sae.forward import uses_pre_encoder_bias
from jaxdict.sae.inference import SAE
from jaxdict.sae.params import SAEParams, fold_input_scale, init_params
from jaxdict.sae.transcoder import unit_input_scale

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
MAX_ACTIVATIONS_FILE = "max_activations.npy"
# Our model names and their Hugging Face ids (SAELens `model_name` convention).
HF_MODEL_IDS = {"gemma3-270m": "google/gemma-3-270m"}
_LAYER_HOOK = re.compile(r"resid_post\.(\d+)")
_TL_HOOK = re.compile(r"blocks\.(\d+)\.hook_resid_post")


class SAELoadError(ValueError):
    """An SAE cannot be loaded or exported; the message names the path or value at fault."""


# -- hook / model name interchange ---------------------------------------------------------------
def hook_to_saelens(hook: str | None) -> str | None:
    """"resid_post.9" -> "blocks.9.hook_resid_post" (TransformerLens naming used by SAELens)."""
    m = _LAYER_HOOK.fullmatch(hook or "")
    return f"blocks.{m.group(1)}.hook_resid_post" if m else hook


def hook_from_saelens(hook: str | None) -> str | None:
    m = _TL_HOOK.fullmatch(hook or "")
    return f"resid_post.{m.group(1)}" if m else hook


def model_from_saelens(name: str | None) -> str | None:
    inverse = {v: k for k, v in HF_MODEL_IDS.items()}
    return inverse.get(name, name) if name else name


# -- dispatch ------------------------------------------------------------------------------------
def load_sae(path: str | Path, step: int | None = None, *, model: str | None = None,
             hook: str | None = None, mesh: Any = None) -> SAE:
    """Load an SAE from a training run folder (latest or `step`), a SAELens folder or a Gemma
    Scope `params.npz`. `model` / `hook` fill in (or override) what the files do not record;
    `mesh` places the parameters with features split over its `model` axis."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".npz":
        sae = load_gemma_scope(p)
    elif p.is_dir() and (p / layout.CONFIG_FILE).is_file() and layout.checkpoint_dir(p).is_dir():
        sae = load_run(p, step)
    elif p.is_dir() and (p / SAELENS_CFG).is_file():
        sae = load_saelens(p)
    elif p.is_dir() and (p / "params.npz").is_file():
        sae = load_gemma_scope(p / "params.npz")
    else:
        raise SAELoadError(
            f"no SAE at {str(path)!r}: expected a training run folder (config.json + checkpoints/), "
            f"a SAELens folder ({SAELENS_CFG} + {SAELENS_WEIGHTS}) or a Gemma Scope params.npz")
    if step is not None and sae.step is None:
        raise SAELoadError(f"step={step} given, but {str(path)!r} is an exported SAE without steps")
    if model is not None or hook is not None:
        sae = dataclasses.replace(sae, model=model or sae.model, hook=hook or sae.hook)
    folder = p if p.is_dir() else p.parent
    if sae.max_activations is None and (folder / MAX_ACTIVATIONS_FILE).is_file():
        sae = sae.with_max_activations(np.load(folder / MAX_ACTIVATIONS_FILE))
    return sae.shard(mesh) if mesh is not None else sae


# -- training runs ---------------------------------------------------------------------------------
def read_run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / layout.CONFIG_FILE
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SAELoadError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(cfg, dict) or "sae" not in cfg:
        raise SAELoadError(f"{path} has no 'sae' section; not a jaxdict run folder")
    if cfg.get("clt") is not None:
        raise SAELoadError(f"{run_dir} is a cross-layer transcoder run (config.json has a 'clt' section), not an "
                           "SAE: load it with jaxdict.clt.run.load_clt_run, or export it with "
                           "jaxdict export RUN --format circuit-tracer")
    return cfg


def sae_config_from_dict(fields: dict[str, Any], where: str) -> SAEConfig:
    known = {f.name for f in dataclasses.fields(SAEConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise SAELoadError(f"{where}: unknown SAEConfig fields {unknown}; known: {sorted(known)}")
    return SAEConfig(**fields)


def load_run(run_dir: str | Path, step: int | None = None) -> SAE:
    """The `params` item of a training checkpoint (latest step, or `step`), folded to raw units.
    Reads only that item (`run_layout.load_or_init`: shapes from the config, then arrays)."""
    import jax

    run_dir = Path(run_dir).expanduser().resolve()
    run_cfg = read_run_config(run_dir)
    cfg = sae_config_from_dict(run_cfg["sae"], str(run_dir / layout.CONFIG_FILE))
    data = run_cfg.get("data", {}) or {}
    steps = layout.all_steps(run_dir)
    if not steps:
        raise SAELoadError(f"{layout.checkpoint_dir(run_dir)} holds no saved step yet")
    if step is not None and step not in steps:
        raise SAELoadError(f"step {step} was never saved in {run_dir}; saved steps: {steps}")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    try:
        loaded = layout.load_or_init(
            lambda key: layout.params_item(init_params(cfg, key), unit_input_scale(cfg)), jax.random.PRNGKey(0),
            shardings=lambda abstract: jax.tree.map(lambda _: device, abstract),
            run_dir=run_dir, step=steps[-1] if step is None else step, init_if_missing=False)
    except layout.CheckpointError as e:
        raise SAELoadError(str(e)) from e
    params, input_scale = layout.params_from_item(loaded.value)
    params = fold_input_scale(params, input_scale)
    return SAE(cfg=cfg, params=params, model=data.get("model"), hook=data.get("hook"),
               target_hook=(data.get("target_hook") or None) if cfg.is_transcoder else None,
               source=str(run_dir), step=int(loaded.step),
               extra={"input_scale": np.asarray(input_scale).tolist(), "store": data.get("store"),
                      "target_store": data.get("target_store") or None,
                      "target_hook": data.get("target_hook") or None,
                      "eval_fraction": data.get("eval_fraction")})


def _params_from_arrays(arrays: dict[str, Any], cfg: SAEConfig, where: str) -> SAEParams:
    d, F, d_out = cfg.d_in, cfg.n_features, cfg.output_width
    want = {"W_enc": (d, F), "b_enc": (F,), "W_dec": (F, d_out), "b_dec": (d_out,)}
    if cfg.has_threshold:
        want["threshold"] = (F,)
    if cfg.skip_connection:
        want["W_skip"] = (d, d_out)
    for name, shape in want.items():
        if name not in arrays:
            raise SAELoadError(f"{where}: missing array {name!r} (needed for arch {cfg.arch!r})")
        if tuple(np.shape(arrays[name])) != shape:
            raise SAELoadError(f"{where}: {name} has shape {tuple(np.shape(arrays[name]))}, "
                               f"expected {shape} for d_in={d}, n_features={F}, d_out={d_out}")
    as32 = {k: jnp.asarray(np.asarray(arrays[k], np.float32)) for k in want}
    return SAEParams(W_enc=as32["W_enc"], b_enc=as32["b_enc"], W_dec=as32["W_dec"],
                     b_dec=as32["b_dec"], threshold=as32.get("threshold"), W_skip=as32.get("W_skip"))


def _from_external(arrays: dict[str, np.ndarray], cfg: SAEConfig, b_dec_subtracted: bool,
                   where: str) -> SAEParams:
    """Params for our forward from weights whose encoder is (x − b_dec·[b_dec_subtracted]) W + b.

    Ours subtracts b_dec before encoding for every arch but relu_l1 (`uses_pre_encoder_bias`);
    where the conventions differ the difference b_dec·W_enc moves into b_enc, which is exact.
    """
    arrays = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
    if cfg.is_transcoder:
        # A transcoder's b_dec is in the output space; no convention subtracts it from the input.
        if b_dec_subtracted:
            raise SAELoadError(f"{where}: a transcoder with apply_b_dec_to_input=true; its b_dec "
                               f"({cfg.output_width} wide) lives in the output space and cannot be subtracted "
                               f"from the {cfg.d_in}-wide input")
        return _params_from_arrays(arrays, cfg, where)
    b_enc = arrays["b_enc"].astype(np.float64)
    shift = arrays["b_dec"].astype(np.float64) @ arrays["W_enc"].astype(np.float64)
    ours = uses_pre_encoder_bias(cfg)
    if ours and not b_dec_subtracted:
        b_enc = b_enc + shift
    elif b_dec_subtracted and not ours:
        b_enc = b_enc - shift
    arrays["b_enc"] = b_enc.astype(np.float32)
    return _params_from_arrays(arrays, cfg, where)


# -- SAELens -----------------------------------------------------------------------------------
_SAELENS_ARCH = {"relu_l1": "standard", "topk": "topk", "jumprelu": "jumprelu",
                 # BatchTopK is a JumpReLU at inference (its learned threshold), as SAELens saves it.
                 "batchtopk": "jumprelu"}
# A Matryoshka SAE is its plain architecture at inference: SAELens 6.54 saves its
# MatryoshkaBatchTopKTrainingSAE as a JumpReLU ("matryoshka_batchtopk" is a training-only class
# there, which SAE.load_from_disk does not know). The prefix sizes go into the metadata as
# `matryoshka_widths` (SAELens's name for them) of cfg.json, for readers (SAELens 6.54 drops it on
# load, as it reads our files as pre-6.0 ones) and for our own loader (via the jaxdict section).


def saelens_architecture(cfg: SAEConfig) -> str:
    """SAELens's architecture name for this SAE or transcoder, or SAELoadError when it has none.

    SAELens 6.54 has inference classes for ReLU and JumpReLU transcoders, with and without a skip
    connection (sae_lens/saes/transcoder.py), but no TopK transcoder: a TopK transcoder is refused
    (BatchTopK exports as the JumpReLU it is at inference)."""
    arch = _SAELENS_ARCH[cfg.arch]
    if not cfg.is_transcoder:
        return arch
    if cfg.arch == "topk":
        raise SAELoadError("SAELens 6.54 has no TopK transcoder class (transcoder, skip_transcoder, "
                           "jumprelu_transcoder, jumprelu_skip_transcoder); export a relu_l1, jumprelu or "
                           "batchtopk transcoder, or use the circuit-tracer export")
    base = "jumprelu_" if arch == "jumprelu" else ""
    return f"{base}{'skip_' if cfg.skip_connection else ''}transcoder"


def export_saelens(sae: SAE, out_dir: str | Path) -> Path:
    """Write `cfg.json` + `sae_weights.safetensors` (raw units: normalize_activations "none").

    Also writes `max_activations.npy` when known. Returns the folder. A transcoder is written as
    SAELens's transcoder classes read it: d_out in cfg.json and W_skip as [d_out, d_in].
    """
    from safetensors.numpy import save_file

    architecture = saelens_architecture(sae.cfg)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg
    p = sae.params
    # apply_b_dec_to_input below matches our encoder's convention, so b_enc goes out unchanged.
    tensors = {"W_enc": np.asarray(p.W_enc, np.float32), "b_enc": np.asarray(p.b_enc, np.float32),
               "W_dec": np.asarray(p.W_dec, np.float32), "b_dec": np.asarray(p.b_dec, np.float32)}
    if cfg.has_threshold:
        tensors["threshold"] = np.asarray(p.threshold, np.float32)
    if p.W_skip is not None:
        # SAELens's SkipTranscoder computes x @ W_skip.T: its W_skip is [d_out, d_in].
        tensors["W_skip"] = np.asarray(p.W_skip, np.float32).T
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(out / SAELENS_WEIGHTS))
    layer = _LAYER_HOOK.fullmatch(sae.hook or "")
    meta = {"model_name": HF_MODEL_IDS.get(sae.model, sae.model), "hook_name": hook_to_saelens(sae.hook),
            "hook_layer": int(layer.group(1)) if layer else None, "prepend_bos": True,
            "sae_lens_training_version": None}
    if cfg.matryoshka_prefixes is not None:
        meta["matryoshka_widths"] = list(cfg.matryoshka_prefixes)
    doc = {
        "architecture": architecture,
        "d_in": cfg.d_in,
        **({"d_out": cfg.d_out} if cfg.is_transcoder else {}),
        "d_sae": cfg.n_features,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": uses_pre_encoder_bias(cfg),
        # The input scale of training is folded into W_enc, W_dec, b_dec (fold_input_scale).
        "normalize_activations": "none",
        "reshape_activations": "none",
        **({"k": cfg.k} if cfg.arch == "topk" else {}),
        "metadata": meta,
        # SAELens < 6 read these at the top level.
        "model_name": meta["model_name"], "hook_name": meta["hook_name"], "hook_layer": meta["hook_layer"],
        # Lossless round trip into jaxdict (SAELens ignores unknown fields).
        "jaxdict": {"format_version": layout.FORMAT_VERSION, "sae": dataclasses.asdict(cfg), "model": sae.model,
                    "hook": sae.hook, "target_hook": sae.target_hook, "source": sae.source, "step": sae.step},
    }
    (out / SAELENS_CFG).write_text(json.dumps(doc, indent=1))
    if sae.max_activations is not None:
        np.save(out / MAX_ACTIVATIONS_FILE, np.asarray(sae.max_activations, np.float32))
    return out


def load_saelens(folder: str | Path) -> SAE:
    """An SAE from a SAELens folder (standard, topk or jumprelu architectures)."""
    from safetensors.numpy import load_file

    folder = Path(folder).expanduser()
    try:
        doc = json.loads((folder / SAELENS_CFG).read_text())
    except json.JSONDecodeError as e:
        raise SAELoadError(f"{folder / SAELENS_CFG} is not valid JSON: {e}") from e
    weights = folder / SAELENS_WEIGHTS
    if not weights.is_file():
        raise SAELoadError(f"{folder} has {SAELENS_CFG} but no {SAELENS_WEIGHTS}")
    arrays = load_file(str(weights))
    norm = doc.get("normalize_activations") or "none"
    if norm != "none":
        raise SAELoadError(
            f"{folder}: normalize_activations={norm!r} needs a run-time scaling that is not stored "
            "in the weights; fold it in first (SAELens fold_activation_norm_scaling_factor) so that "
            "it reads 'none'")
    meta = doc.get("metadata") or doc.get("meta") or {}
    model = model_from_saelens(meta.get("model_name", doc.get("model_name")))
    hook = hook_from_saelens(meta.get("hook_name", doc.get("hook_name")))
    ours = doc.get("jaxdict")
    if ours:
        try:  # exports before format versions were recorded are version 1
            layout.check_version(ours.get("format_version", 1), str(folder / SAELENS_CFG))
        except layout.CheckpointError as e:
            raise SAELoadError(str(e)) from e
        cfg = sae_config_from_dict(ours["sae"], str(folder / SAELENS_CFG))
        model, hook = ours.get("model", model), ours.get("hook", hook)
        target_hook = ours.get("target_hook")
    else:
        cfg = _saelens_config(doc, folder)
    if "W_skip" in arrays:
        arrays = {**arrays, "W_skip": np.asarray(arrays["W_skip"]).T}  # SAELens: [d_out, d_in]
    params = _from_external(arrays, cfg, bool(doc.get("apply_b_dec_to_input", not cfg.is_transcoder)),
                            str(weights))
    return SAE(cfg=cfg, params=params, model=model, hook=hook, source=str(folder),
               step=ours.get("step") if ours else None, target_hook=target_hook if ours else None)


def _saelens_config(doc: dict[str, Any], folder: Path) -> SAEConfig:
    arch = doc.get("architecture", "standard")
    act = doc.get("activation_fn_str") or doc.get("activation_fn")
    k = doc.get("k") or (doc.get("activation_fn_kwargs") or {}).get("k")
    if arch == "standard" and act == "topk":
        arch = "topk"  # SAELens < 6 wrote TopK SAEs as "standard" with activation_fn "topk"
    transcoders = {"transcoder": ("relu_l1", False), "skip_transcoder": ("relu_l1", True),
                   "jumprelu_transcoder": ("jumprelu", False), "jumprelu_skip_transcoder": ("jumprelu", True)}
    ours = {"standard": "relu_l1", "topk": "topk", "jumprelu": "jumprelu"}.get(arch) or transcoders.get(arch, (None,))[0]
    if ours is None:
        raise SAELoadError(f"{folder / SAELENS_CFG}: architecture {arch!r} is not supported; valid: standard, "
                           f"topk, jumprelu, {', '.join(transcoders)}")
    try:
        fields: dict[str, Any] = {"arch": ours, "d_in": int(doc["d_in"]), "n_features": int(doc["d_sae"])}
        if arch in transcoders:
            fields.update(d_out=int(doc["d_out"]), skip_connection=transcoders[arch][1])
    except KeyError as e:
        raise SAELoadError(f"{folder / SAELENS_CFG} lacks the field {e.args[0]!r}") from e
    if ours == "topk":
        if k is None:
            raise SAELoadError(f"{folder / SAELENS_CFG}: topk architecture without a 'k' field")
        fields["k"] = int(k)
    return SAEConfig(**fields)


# -- Gemma Scope ----------------------------------------------------------------------------------
def load_gemma_scope(npz_path: str | Path) -> SAE:
    """A Gemma Scope JumpReLU from its `params.npz` (W_enc, W_dec, b_enc, b_dec, threshold).

    Gemma Scope encodes x W_enc + b_enc with no pre-encoder bias. The layer is read from a
    `layer_<L>` part of the path when present (hook resid_post.L); the model is left unknown.
    """
    path = Path(npz_path).expanduser()
    with np.load(path) as z:
        arrays = {k: np.asarray(z[k]) for k in z.files}
    missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold") if k not in arrays]
    if missing:
        raise SAELoadError(f"{path}: not a Gemma Scope params.npz, missing arrays {missing}")
    d, F = arrays["W_enc"].shape
    cfg = SAEConfig(arch="jumprelu", d_in=int(d), n_features=int(F))
    layer = re.search(r"layer_(\d+)", str(path))
    hook = f"resid_post.{layer.group(1)}" if layer else None
    params = _from_external(arrays, cfg, False, str(path))
    return SAE(cfg=cfg, params=params, model=None, hook=hook, source=str(path))
