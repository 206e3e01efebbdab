"""Import Gemma Scope releases as `RawTranscoder`s: Gemma Scope 2 (`params.safetensors`) SAEs,
transcoders and skip transcoders, and the original Gemma Scope `params.npz`.

Gemma Scope 2 (Gemma 3; the key layout SAELens 6.54's `gemma_3_sae_huggingface_loader` and
circuit-tracer 0.5.0's `load_gemma_scope_2_transcoder` read): `<folder>/params.safetensors` with
w_enc [d_in, F], w_dec [F, d_out], b_enc [F], b_dec [d_out], threshold [F], and for a skip
transcoder affine_skip_connection [d_in, d_out] (applied as x @ A, so it is our W_skip as stored;
SAELens and circuit-tracer transpose it into their [d_out, d_in] convention). An optional
`config.json` beside it gives model_name, hf_hook_point_in / hf_hook_point_out and
affine_connection; without it, the kind is read from the folder path as SAELens does
(`transcoder`, `resid_post`, `mlp_out`, `attn_out`, `clt`) and the layer from `layer_<L>`.
All are JumpReLU with no pre-encoder bias: z = x W_enc + b_enc.

Hook points (SAELens's `_infer_gemma_3_raw_cfg_dict`): transcoders read
`model.layers.L.pre_feedforward_layernorm.output` = our mlp_in.L and write
`post_feedforward_layernorm.output` = our mlp_out.L; resid_post SAEs read `model.layers.L.output`
= resid_post.L; mlp_out SAEs the post-FFN norm output = mlp_out.L. attn_out SAEs read
`self_attn.o_proj.input` (the concatenated heads before o_proj and the post-attention norm), which
is not jaxdict's attn_out.L (after that norm): refused rather than mislabelled. Cross-layer
transcoders (clt) are refused.

Original Gemma Scope (Gemma 2; Lieberum et al. 2024): `params.npz` with W_enc [d, F], W_dec [F, d],
b_enc, b_dec, threshold, same maths; the kind from the path (`transcoders`, `-res`, `-mlp`, `-att`)
or the `kind` argument.

An SAE's arrays are returned in jaxdict's SAE convention (b_dec subtracted before encoding), so
b_enc gains b_dec W_enc, which is exact: (x − b_dec) W + (b_enc + b_dec W) = x W + b_enc.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from jaxdict.sae.raw_transcoder import InteropError, RawTranscoder, as_float32, transcoder_fields

KINDS = ("transcoder", "resid_post", "mlp_out")
GEMMA3_MODELS = {"google/gemma-3-270m": "gemma3-270m"}
_HF_HOOK = re.compile(r"model\.layers\.(\d+)\.(pre_feedforward_layernorm\.output|"
                      r"post_feedforward_layernorm\.output|output|self_attn\.o_proj\.input)")


def _layer_of(path: Path) -> int | None:
    m = re.search(r"layer_(\d+)", str(path))
    return int(m.group(1)) if m else None


def _kind_from_path(path: Path, gemma_scope_1: bool) -> str | None:
    s = str(path)
    if re.search(r"(^|[/_-])clt([/_-]|$)", s):
        raise InteropError(f"{path}: a cross-layer transcoder (clt); only per-layer transcoders and SAEs "
                           "are supported")
    if "attn_out" in s or (gemma_scope_1 and re.search(r"-att(/|$)", s)):
        raise InteropError(f"{path}: an attention SAE reads o_proj's input (concatenated heads, before "
                           "the post-attention norm), which is not jaxdict's attn_out.L; not imported")
    if "transcoder" in s:
        return "transcoder"
    if "resid_post" in s or (gemma_scope_1 and re.search(r"-res(/|$)", s)):
        return "resid_post"
    if "mlp_out" in s or (gemma_scope_1 and re.search(r"-mlp(/|$)", s)):
        return "mlp_out"
    return None


def _kind_from_hf_hooks(doc: dict[str, Any], where: str) -> tuple[str, int] | None:
    m = _HF_HOOK.fullmatch(doc.get("hf_hook_point_in") or "")
    if m is None:
        return None
    layer, point = int(m.group(1)), m.group(2)
    if point == "self_attn.o_proj.input":
        raise InteropError(f"{where}: hf_hook_point_in {doc['hf_hook_point_in']!r} (o_proj's input) is "
                           "not jaxdict's attn_out.L (after the post-attention norm); not imported")
    if point == "pre_feedforward_layernorm.output":
        return "transcoder", layer
    return ("resid_post" if point == "output" else "mlp_out"), layer


def _model_name(doc: dict[str, Any]) -> str | None:
    """SAELens's normalisation of Gemma Scope 2's model names, then ours where we have one."""
    name = doc.get("model_name")
    if not name:
        return None
    name = (name if "google" in name else "google/" + name).replace("-v3", "-3")
    if "270m" in name:
        name = name.replace("-pt", "")
    return GEMMA3_MODELS.get(name, name)


def _build(arrays: dict[str, np.ndarray], kind: str, layer: int | None, model: str | None,
           where: str) -> RawTranscoder:
    if kind not in KINDS:
        raise InteropError(f"{where}: kind {kind!r}; valid: {', '.join(KINDS)}")
    skip = "W_skip" in arrays
    if kind == "transcoder":
        fields = transcoder_fields("jumprelu", arrays["W_enc"], arrays["W_dec"], skip)
        hooks = (f"mlp_in.{layer}", f"mlp_out.{layer}") if layer is not None else (None, None)
    else:
        if skip:
            raise InteropError(f"{where}: a {kind} SAE with an affine_skip_connection")
        W_enc, b_dec = arrays["W_enc"].astype(np.float64), arrays["b_dec"].astype(np.float64)
        arrays = {**arrays, "b_enc": arrays["b_enc"].astype(np.float64) + b_dec @ W_enc}
        fields = {"arch": "jumprelu", "d_in": int(W_enc.shape[0]), "n_features": int(W_enc.shape[1])}
        hooks = (f"{kind}.{layer}" if layer is not None else None, None)
    return RawTranscoder(fields, as_float32(arrays), hooks[0], hooks[1], model, where).check()


def load_gemma_scope_2(path: str | Path, kind: str | None = None) -> RawTranscoder:
    """A Gemma Scope 2 SAE or (skip) transcoder from `params.safetensors` or the folder holding it."""
    from safetensors.numpy import load_file

    path = Path(path).expanduser()
    file = path / "params.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise InteropError(f"{file}: no such file; expected a Gemma Scope 2 params.safetensors")
    t = load_file(str(file))
    missing = [k for k in ("w_enc", "w_dec", "b_enc", "b_dec", "threshold") if k not in t]
    if missing:
        raise InteropError(f"{file}: not a Gemma Scope 2 params.safetensors, missing tensors {missing} "
                           f"(has {sorted(t)})")
    cfg_file = file.parent / "config.json"
    doc = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    if doc.get("architecture", "jump_relu") != "jump_relu":
        raise InteropError(f"{cfg_file}: architecture {doc['architecture']!r}; Gemma Scope 2 is 'jump_relu'")
    from_hooks = _kind_from_hf_hooks(doc, str(cfg_file))
    layer = from_hooks[1] if from_hooks else _layer_of(file.parent)
    kind = kind or (from_hooks[0] if from_hooks else _kind_from_path(file.parent, False))
    if kind is None:
        raise InteropError(f"{file}: cannot tell the kind from its config.json or path; pass kind, one "
                           f"of {', '.join(KINDS)}")
    arrays = {"W_enc": t["w_enc"], "W_dec": t["w_dec"], "b_enc": t["b_enc"], "b_dec": t["b_dec"],
              "threshold": t["threshold"]}
    if "affine_skip_connection" in t:
        arrays["W_skip"] = t["affine_skip_connection"]
    elif doc.get("affine_connection"):
        raise InteropError(f"{cfg_file}: affine_connection is true but {file} has no affine_skip_connection")
    return _build(arrays, kind, layer, _model_name(doc), str(file))


def load_gemma_scope_npz(path: str | Path, kind: str | None = None) -> RawTranscoder:
    """An original Gemma Scope SAE or transcoder from its `params.npz`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InteropError(f"{path}: no such file; expected a Gemma Scope params.npz")
    with np.load(path) as z:
        arrays = {k: np.asarray(z[k]) for k in z.files}
    missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold") if k not in arrays]
    if missing:
        raise InteropError(f"{path}: not a Gemma Scope params.npz, missing arrays {missing}")
    kind = kind or _kind_from_path(path, True)
    if kind is None:
        raise InteropError(f"{path}: cannot tell the kind from the path; pass kind, one of {', '.join(KINDS)}")
    return _build({k: arrays[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}, kind,
                  _layer_of(path), None, str(path))
