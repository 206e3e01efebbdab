"""CLTs in circuit-tracer's layout (PyPI circuit-tracer 0.5.0, transcoder/cross_layer_transcoder.py):
export, and import of Gemma Scope 2's CLT key layout.

Written (what `load_clt(folder)` and circuit-tracer's own cache read):

    <out>/config.yaml             model_kind: cross_layer_transcoder, model_name, feature_input_hook
                                  (hook_resid_mid), feature_output_hook (hook_mlp_out), scan
    <out>/W_enc_<l>.safetensors   W_enc_<l> [F, d] (torch Linear layout: ours [d, F] transposed),
                                  b_enc_<l> [F], b_dec_<l> [d], [threshold_<l> [F]]
    <out>/W_dec_<l>.safetensors   W_dec_<l> [F, L − l, d] (ours as stored)

circuit-tracer encodes `einsum("lbd,lfd->lbf", x, W_enc) + b_enc` and applies JumpReLU
`z * (z > threshold)` (strict, as ours) when threshold_0 exists, else ReLU; it decodes
ŷ_l' = Σ_l Σ_i a_li W_dec_l[i, l' − l] + b_dec_l' — the same maths as jaxdict.clt.forward. So:
jumprelu -> its θ; batchtopk -> JumpReLU at the learned per-layer inference threshold (exactly
our train=False forward); topk refused (no circuit-tracer CLT activation keeps a per-token top k).

Loading: `load_clt(str(out))`, or `circuit_tracer.utils.caching.load_transcoders_from_cache(out.name,
cache_dir=out.parent)` (reads config.yaml), or ReplacementModel.from_pretrained with
CIRCUIT_TRACER_CACHE_DIR=out.parent.

Hooks (TransformerLens names, which circuit-tracer uses): `blocks.l.hook_resid_mid` is the residual
after attention (resid_pre + the post-attention-normed attn_out) = jaxdict's resid_mid.l; TL's
`hook_mlp_out` is after Gemma's post-FFN norm = jaxdict's mlp_out.l (jaxdict/sae/circuit_tracer_io.py
documents the checks in TL 3.9's sources). Neither needs a norm fold, unlike mlp_in.

Scales: the CLT trains on x_l·s_in[l] and y_l·s_out[l]; export folds them: W_enc[l]·s_in[l],
W_dec[l][:, m] / s_out[l + m], b_dec[l] / s_out[l]; thresholds act on latents and do not change.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping

import jax
import numpy as np

from jaxdict.clt.config import CLTConfig
from jaxdict.clt.params import CLTParams

INPUT_HOOK, OUTPUT_HOOK = "hook_resid_mid", "hook_mlp_out"
_ENC_FILE = re.compile(r"W_enc_(\d+)\.safetensors")


class CLTInteropError(ValueError):
    pass


def _scales(scale, n_layers: int, name: str) -> np.ndarray:
    s = np.ones(n_layers) if scale is None else np.asarray(scale, np.float64)
    if s.shape != (n_layers,) or not np.all(np.isfinite(s) & (s > 0)):
        raise CLTInteropError(f"{name} must be {n_layers} positive finite per-layer scales, got {scale!r}")
    return s


def export_clt_circuit_tracer(out_dir: str | Path, params: CLTParams, cfg: CLTConfig, *,
                              input_scale=None, output_scale=None, model_name: str = "google/gemma-3-270m",
                              scan: str | None = None) -> Path:
    """Write `params` (trained on scaled rows; the scales are folded here) for circuit-tracer."""
    from safetensors.numpy import save_file

    if cfg.arch == "topk":
        raise CLTInteropError(
            "arch 'topk' cannot be exported for circuit-tracer: its CrossLayerTranscoder builds only "
            "ReLU or JumpReLU (threshold_<l>) from files, and a per-token top-k has no fixed threshold. "
            "Valid archs: jumprelu, batchtopk (exported as JumpReLU at its learned inference threshold)")
    from jaxdict.clt.run import fold_scales

    L = cfg.n_layers
    s_in, s_out = _scales(input_scale, L, "input_scale"), _scales(output_scale, L, "output_scale")
    p = fold_scales(params, s_in, s_out)
    if cfg.arch == "batchtopk" and not np.all(p.threshold > 0):
        raise CLTInteropError("this BatchTopK CLT has no inference threshold yet (0 = never estimated): "
                              "train it for at least one step before exporting")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    for layer in range(L):
        enc = {f"W_enc_{layer}": p.W_enc[layer].T, f"b_enc_{layer}": p.b_enc[layer],
               f"b_dec_{layer}": p.b_dec[layer], f"threshold_{layer}": p.threshold[layer]}
        dec = p.W_dec[layer]
        if dec.shape[1] < L - layer:  # a capped decoder_span: circuit-tracer's layout has every l' ≥ l
            dec = np.concatenate([dec, np.zeros((dec.shape[0], L - layer - dec.shape[1], dec.shape[2]))], axis=1)
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in enc.items()}, str(out / f"W_enc_{layer}.safetensors"))
        save_file({f"W_dec_{layer}": np.ascontiguousarray(dec, np.float32)}, str(out / f"W_dec_{layer}.safetensors"))
    lines = [f"model_kind: {json.dumps('cross_layer_transcoder')}", f"model_name: {json.dumps(model_name)}",
             f"feature_input_hook: {json.dumps(INPUT_HOOK)}", f"feature_output_hook: {json.dumps(OUTPUT_HOOK)}",
             f"scan: {json.dumps(scan or out.name)}",
             "jaxdict:", f"  arch: {json.dumps(cfg.arch)}", f"  n_layers: {L}", f"  n_features: {cfg.n_features}"]
    (out / "config.yaml").write_text("\n".join(lines) + "\n")
    return out


def import_clt_circuit_tracer(folder: str | Path) -> tuple[CLTParams, CLTConfig]:
    """Read a circuit-tracer CLT folder (ours or load_clt's) as raw-unit jumprelu CLTParams
    (ReLU files get θ = 0: z > 0 is the same strict test)."""
    from safetensors.numpy import load_file

    folder = Path(folder).expanduser()
    layers = sorted(int(m.group(1)) for f in folder.glob("W_enc_*.safetensors") if (m := _ENC_FILE.fullmatch(f.name)))
    if not layers or layers != list(range(len(layers))):
        raise CLTInteropError(f"{folder}: expected W_enc_0.safetensors … W_enc_<L-1>.safetensors, found layers {layers}")
    enc = [load_file(str(folder / f"W_enc_{layer}.safetensors")) for layer in layers]
    dec = [load_file(str(folder / f"W_dec_{layer}.safetensors"))[f"W_dec_{layer}"] for layer in layers]
    L = len(layers)
    thresholds = [e.get(f"threshold_{layer}") for layer, e in zip(layers, enc)]
    return _assemble(
        W_enc=np.stack([e[f"W_enc_{layer}"].T for layer, e in zip(layers, enc)]),
        b_enc=np.stack([e[f"b_enc_{layer}"] for layer, e in zip(layers, enc)]),
        b_dec=np.stack([e[f"b_dec_{layer}"] for layer, e in zip(layers, enc)]),
        threshold=None if thresholds[0] is None else np.stack(thresholds),
        W_dec=dec, n_layers=L, where=str(folder))


def import_gemma_scope_2_clt(paths: Mapping[int, str | Path]) -> tuple[CLTParams, CLTConfig]:
    """Gemma Scope 2's per-layer CLT files (JumpReLUMultiLayerSAE), keys as circuit-tracer's
    load_gemma_scope_2_clt reads them: w_enc [d, F], w_dec [F, L, d] (all L output layers; the
    l' < l blocks, which a CLT cannot use, are dropped exactly as circuit-tracer drops them),
    b_enc [F], b_dec [d], threshold [F]. An affine_skip_connection is refused: jaxdict's CLT has none.

    circuit-tracer 0.5.0's loader iterates `range(max(paths.keys()))`, i.e. it skips the last layer
    and its W_dec shapes then disagree with its own class; we read every layer given."""
    from safetensors.numpy import load_file

    layers = sorted(paths)
    if layers != list(range(len(layers))) or not layers:
        raise CLTInteropError(f"Gemma Scope 2 CLT paths must be keyed 0..L-1, got layers {layers}")
    files = [load_file(str(Path(paths[layer]).expanduser())) for layer in layers]
    L = len(layers)
    for layer, f in zip(layers, files):
        missing = {"w_enc", "w_dec", "b_enc", "b_dec", "threshold"} - set(f)
        if missing:
            raise CLTInteropError(f"{paths[layer]}: not a Gemma Scope 2 CLT layer file, lacks {sorted(missing)}")
        if "affine_skip_connection" in f:
            raise CLTInteropError(f"{paths[layer]}: has an affine_skip_connection; jaxdict's CLT has no skip term")
        if f["w_dec"].ndim != 3 or f["w_dec"].shape[1] != L:
            raise CLTInteropError(f"{paths[layer]}: w_dec has shape {f['w_dec'].shape}, expected [F, {L}, d] "
                                  f"for {L} layer files")
    return _assemble(W_enc=np.stack([f["w_enc"] for f in files]), b_enc=np.stack([f["b_enc"] for f in files]),
                     b_dec=np.stack([f["b_dec"] for f in files]), threshold=np.stack([f["threshold"] for f in files]),
                     W_dec=[f["w_dec"][:, layer:] for layer, f in zip(layers, files)], n_layers=L,
                     where=str(paths[layers[0]]))


def _assemble(*, W_enc, b_enc, b_dec, threshold, W_dec, n_layers: int, where: str) -> tuple[CLTParams, CLTConfig]:
    L, d, F = W_enc.shape
    for layer, block in enumerate(W_dec):
        if block.shape != (F, L - layer, d):
            raise CLTInteropError(f"{where}: W_dec of layer {layer} has shape {block.shape}, expected {(F, L - layer, d)}")
    if threshold is None:
        threshold = np.zeros((L, F))
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    params = CLTParams(W_enc=f32(W_enc), b_enc=f32(b_enc), W_dec=tuple(f32(b) for b in W_dec), b_dec=f32(b_dec),
                       threshold=f32(threshold))
    return params, CLTConfig(n_layers=L, d_model=d, n_features=F, arch="jumprelu")
