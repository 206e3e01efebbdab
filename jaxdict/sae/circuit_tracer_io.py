"""Transcoders in circuit-tracer's per-layer layout (PyPI `circuit-tracer` 0.5.0): export and import.

Layout written (the one circuit-tracer's own cache and Hugging Face repos use):

    <out>/config.yaml              model_kind: transcoder_set, model_name, feature_input_hook,
                                   feature_output_hook, scan (+ a `jaxdict` provenance section)
    <out>/layer_<L>.safetensors    W_enc [F, d], W_dec [F, d], b_enc [F], b_dec [d],
                                   [activation_function.threshold [F]], [W_skip [d, d]]

Loading it in circuit-tracer: `circuit_tracer.utils.caching.load_transcoders_from_cache(out.name,
cache_dir=out.parent)`, or `ReplacementModel.from_pretrained(model, out.name)` with the environment
variable CIRCUIT_TRACER_CACHE_DIR=out.parent (its cache has exactly this layout), or upload the
folder as a Hugging Face repo and pass its id. CLI: `jaxdict export RUN... --format circuit-tracer`.

circuit-tracer's `load_relu_transcoder` (transcoder/single_layer_transcoder.py) reads these keys:
W_enc is torch.nn.Linear's [F, d] (it encodes `F.linear(x, W_enc, b_enc)`), so ours is transposed;
its skip term is `x @ W_skip.T`, so ours [d_in, d_out] is transposed too; W_dec and the biases are
as ours. The activation is JumpReLU (`x * (x > threshold)`, strict, as ours) when the file has
`activation_function.threshold`, else `F.relu`. Hence:

- relu_l1 -> ReLU; jumprelu -> JumpReLU; batchtopk -> JumpReLU with its learned inference
  threshold (exactly jaxdict's inference forward).
- topk is refused: no circuit-tracer loader builds a TopK activation from a file, and its TopK
  class (transcoder/activation_functions.py) keeps the k largest pre-activations *without* a ReLU,
  so negative winners survive where ours are zeroed. Train BatchTopK or JumpReLU for circuit-tracer.
- circuit-tracer has one d_model per transcoder: d_in must equal d_out (true for mlp_in -> mlp_out).
- Its TranscoderSet asserts a transcoder for every layer 0..max. `pad_missing_layers` fills the
  others with inert all-zero transcoders (same width, same skip flag): they never fire, so in a
  replacement model those layers' MLPs are carried entirely by circuit-tracer's error nodes.

Hooks, checked in the sources (circuit-tracer 0.5.0, TransformerLens 3.9.0). jaxdict's `mlp_in.L`
is the MLP's input after Gemma's pre-FFN RMSNorm *with* its weight (1 + w); `mlp_out.L` is after
the post-FFN norm (jaxdict.lm.hooks).

- TransformerLens backend: circuit-tracer loads HookedTransformer with fold_ln=False
  (replacement_model_transformerlens.py, from_pretrained_and_transcoders). TL's RMSNorm computes
  `x = self.hook_normalized(x / scale)` and only then `return x * self.w` (components/rms_norm.py,
  line 50), and its Gemma conversion sets `blocks.L.ln2.w = pre_feedforward_layernorm.weight + 1`
  (pretrained/weight_conversions/gemma.py). So `ln2.hook_normalized` is x / rms(x) WITHOUT the
  (1 + w) multiplier. TL's `blocks.L.hook_mlp_out` is taken after ln2_post (components/
  transformer_block.py, apply_mlp) = our mlp_out.
- nnsight backend (which circuit-tracer's README requires for Gemma 3): utils/tl_nnsight_mapping.py
  maps, for Gemma3ForCausalLM, `mlp.hook_in` to the output of `pre_feedforward_layernorm` (weight
  included: = our mlp_in exactly), `ln2.hook_normalized` to its inner `_norm` (no weight), and
  `hook_mlp_out` to the output of `post_feedforward_layernorm` (= our mlp_out). SAELens 6.54 reads
  Gemma Scope 2 transcoders from the same `pre_feedforward_layernorm.output`.

So the exporter writes feature_input_hook "mlp.hook_in" (nnsight; no change to the weights), or,
for a config that also runs on the TransformerLens backend, "ln2.hook_normalized" with the norm
multiplier g = 1 + w folded into the encoder rows: x_in = n ⊙ g, so x_in W_enc = n (diag(g) W_enc)
and likewise W_skip. Without that fold, features would be right on a tensor but wrong inside
the model. The output hook is "hook_mlp_out" in both backends.

Inside the model (tests/test_circuit_tracer.py, the embedded Gemma 3 270M written as a Hugging
Face folder by jaxdict.lm.hf_writer): the TransformerLens-backend ReplacementModel gives layer-9
features equal to jaxdict's to ~1e-5, once one circuit-tracer 0.5.0 bug is worked around: its
`_deduplicate_attention_buffers` gives every block the last block's RoPE sin/cos tables, while
Gemma 3's local layers use base 10^4 and its global ones 10^6 (TL's `_rotary_base`), so all but
one kind of layer run the wrong rotation (features off by up to ~4 at layer 9). The test restores
per-layer tables; the nnsight backend, which circuit-tracer recommends for Gemma 3, needs nnsight
and transformers <= 4.57.3, not installable beside our transformer-lens 3.9.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from jaxdict.sae.raw_transcoder import InteropError, RawTranscoder, as_float32, transcoder_fields

CONFIG_FILE = "config.yaml"
LAYER_FILE = "layer_{}.safetensors"
THRESHOLD_KEY = "activation_function.threshold"
# circuit-tracer input hook -> does the tensor at that hook include the pre-FFN norm's (1 + w)?
INPUT_HOOKS = {"mlp.hook_in": True, "ln2.hook_normalized": False}
OUTPUT_HOOK = "hook_mlp_out"
_JAXDICT_HOOK = re.compile(r"(mlp_in|mlp_out)\.(\d+)")
_LAYER_FILE = re.compile(r"layer_(\d+)\.safetensors")


def _check_exportable(layer: int, raw: RawTranscoder, allow_topk: bool = False) -> None:
    where = raw.source or f"layer {layer}"
    raw.check()
    if raw.arch == "topk" and not allow_topk:
        raise InteropError(
            f"{where}: arch 'topk' cannot be exported for circuit-tracer: its loaders build only ReLU "
            "or JumpReLU from a file, and its TopK class keeps the k largest pre-activations without "
            "a ReLU (ours zeroes negative winners). Valid archs: relu_l1, jumprelu, batchtopk "
            "(exported as its JumpReLU inference form); or build the set in memory with "
            "jaxdict.sae.circuit_tracer_torch.transcoder_set, which gives TopK its ReLU")
    if not raw.is_transcoder:
        raise InteropError(f"{where}: an SAE (no d_out) is not a transcoder; circuit-tracer loads "
                           "transcoders that read mlp_in.L and write mlp_out.L")
    if raw.fields["d_out"] != raw.fields["d_in"]:
        raise InteropError(f"{where}: d_in={raw.fields['d_in']} != d_out={raw.fields['d_out']}; "
                           "circuit-tracer's SingleLayerTranscoder has one d_model for both")
    for hook, kind in ((raw.input_hook, "mlp_in"), (raw.output_hook, "mlp_out")):
        if hook is not None and hook != f"{kind}.{layer}":
            raise InteropError(f"{where}: exported as layer {layer}, so it must map {kind}.{layer}; "
                               f"it records {hook!r}")


def _layer_tensors(raw: RawTranscoder, norm_weight: np.ndarray | None) -> dict[str, np.ndarray]:
    a = raw.arrays
    W_enc, W_skip = a["W_enc"].astype(np.float64), a.get("W_skip")
    if norm_weight is not None:  # the hook gives x / rms(x): fold (1 + w) into the input side
        g = np.asarray(norm_weight, np.float64)[:, None]
        W_enc = g * W_enc
        W_skip = None if W_skip is None else g * W_skip.astype(np.float64)
    out = {"W_enc": W_enc.T, "W_dec": a["W_dec"], "b_enc": a["b_enc"], "b_dec": a["b_dec"]}
    if "threshold" in a:
        out[THRESHOLD_KEY] = a["threshold"]
    if W_skip is not None:
        out["W_skip"] = np.asarray(W_skip).T
    return as_float32(out)


def _inert_layer(d: int, F: int, skip: bool) -> dict[str, np.ndarray]:
    """All zeros, no threshold (ReLU): relu(0) = 0, so no feature ever fires and it outputs 0."""
    out = {"W_enc": np.zeros((F, d), np.float32), "W_dec": np.zeros((F, d), np.float32),
           "b_enc": np.zeros(F, np.float32), "b_dec": np.zeros(d, np.float32)}
    if skip:
        out["W_skip"] = np.zeros((d, d), np.float32)
    return out


def _yaml_scalar(v: Any) -> str:
    return json.dumps(v)  # a JSON string / number / bool / null is a valid YAML flow scalar


def layer_tensors(transcoders: Mapping[int, RawTranscoder], *, input_hook: str = "mlp.hook_in",
                  norm_weights: Mapping[int, np.ndarray] | None = None, pad_missing_layers: bool = False,
                  n_layers: int | None = None, allow_topk: bool = False) -> dict[int, dict[str, np.ndarray]]:
    """{layer: circuit-tracer tensors} for every layer 0..n_layers-1 (padded ones inert), after the
    checks and the norm fold that export_circuit_tracer documents."""
    if input_hook not in INPUT_HOOKS:
        raise InteropError(f"input_hook {input_hook!r}; valid: {', '.join(INPUT_HOOKS)}")
    if not transcoders:
        raise InteropError("no transcoders to export")
    for layer, raw in transcoders.items():
        if not isinstance(layer, (int, np.integer)) or layer < 0:
            raise InteropError(f"layer {layer!r}: layers must be non-negative integers")
        _check_exportable(int(layer), raw, allow_topk)
    widths = {raw.fields["n_features"] for raw in transcoders.values()}
    dims = {raw.fields["d_in"] for raw in transcoders.values()}
    skips = {bool(raw.fields.get("skip_connection")) for raw in transcoders.values()}
    if len(widths) > 1 or len(dims) > 1 or len(skips) > 1:
        raise InteropError(f"circuit-tracer's TranscoderSet needs one width, one d_model and one skip "
                           f"setting for all layers; got n_features {sorted(widths)}, d {sorted(dims)}, "
                           f"skip {sorted(skips)}")
    top = max(transcoders) + 1 if n_layers is None else int(n_layers)
    if top <= max(transcoders):
        raise InteropError(f"n_layers={n_layers} but a transcoder is given for layer {max(transcoders)}")
    missing = sorted(set(range(top)) - set(transcoders))
    if missing and not pad_missing_layers:
        raise InteropError(f"circuit-tracer needs a transcoder for every layer 0..{top - 1}; "
                           f"missing {missing}. Pass pad_missing_layers=True to fill them with inert "
                           "(never-firing) transcoders")
    needs_fold = not INPUT_HOOKS[input_hook]
    if needs_fold:
        absent = sorted(set(transcoders) - set(norm_weights or {}))
        if absent:
            raise InteropError(f"input_hook {input_hook!r} reads x / rms(x) without the norm weight: "
                               f"norm_weights (the pre-FFN multiplier 1 + w) needed for layers {absent}")
    (F,), (d,), (skip,) = widths, dims, skips
    out = {}
    for layer in range(top):
        raw = transcoders.get(layer)
        if raw is None:
            out[layer] = _inert_layer(d, F, skip)
            continue
        g = None
        if needs_fold:
            g = np.asarray(norm_weights[layer], np.float32)
            if g.shape != (d,):
                raise InteropError(f"norm_weights[{layer}] has shape {g.shape}, expected ({d},)")
        out[layer] = _layer_tensors(raw, g)
    return out


def export_circuit_tracer(out_dir: str | Path, transcoders: Mapping[int, RawTranscoder], *,
                          model_name: str = "google/gemma-3-270m", input_hook: str = "mlp.hook_in",
                          norm_weights: Mapping[int, np.ndarray] | None = None,
                          pad_missing_layers: bool = False, n_layers: int | None = None,
                          scan: str | None = None) -> Path:
    """Write `transcoders` ({layer: RawTranscoder}) in circuit-tracer's layout; returns the folder.

    input_hook: "mlp.hook_in" (the nnsight backend; weights unchanged) or "ln2.hook_normalized"
    (both backends; needs `norm_weights[L]`, the full pre-FFN norm multiplier 1 + w of each
    exported layer, e.g. jaxdict.lm's params["layers"][L]["ffn_norm"], folded into W_enc/W_skip).
    n_layers: the model's layer count. circuit-tracer's replacement model hooks and encodes every
    layer of the model, so a set for a replacement model must cover all of them (padded).
    A TopK transcoder is refused here (no file form); `jaxdict.sae.circuit_tracer_torch` builds one
    in memory.
    """
    from safetensors.numpy import save_file

    tensors = layer_tensors(transcoders, input_hook=input_hook, norm_weights=norm_weights,
                            pad_missing_layers=pad_missing_layers, n_layers=n_layers)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    for layer, t in tensors.items():
        save_file(t, str(out / LAYER_FILE.format(layer)))
    missing = sorted(set(tensors) - set(transcoders))
    provenance = {str(layer): {"source": raw.source, "arch": raw.arch, "model": raw.model}
                  for layer, raw in sorted(transcoders.items())}
    lines = [f"model_kind: {_yaml_scalar('transcoder_set')}",
             f"model_name: {_yaml_scalar(model_name)}",
             f"feature_input_hook: {_yaml_scalar(input_hook)}",
             f"feature_output_hook: {_yaml_scalar(OUTPUT_HOOK)}",
             f"scan: {_yaml_scalar(scan or out.name)}",
             "# Written by jaxdict; circuit-tracer ignores this section.",
             f"jaxdict: {json.dumps({'layers': provenance, 'padded_layers': missing})}"]
    (out / CONFIG_FILE).write_text("\n".join(lines) + "\n")
    return out


def _unfold(W_enc: np.ndarray, W_skip: np.ndarray | None, norm_weight: np.ndarray, layer: int):
    """Undo the (1 + w) fold. Gemma 3 270M has one channel per pre-FFN norm (two in layers 1 and
    5, none in 13) whose multiplier is exactly 0, so mlp_in is always 0 there and those encoder
    rows never act inside the model: they come back as 0 (their exported values are lost)."""
    g = np.asarray(norm_weight, np.float64)
    if g.shape != (W_enc.shape[0],):
        raise InteropError(f"norm_weights[{layer}] has shape {g.shape}, expected ({W_enc.shape[0]},)")
    inv = np.divide(1.0, g, out=np.zeros_like(g), where=g != 0)[:, None]
    return W_enc * inv, None if W_skip is None else W_skip * inv


def _read_config(path: Path) -> dict[str, Any]:
    """Top-level keys of a circuit-tracer config.yaml (PyYAML when present, else `key: scalar` lines)."""
    text = path.read_text()
    try:
        import yaml
    except ImportError:
        doc: dict[str, Any] = {}
        for line in text.splitlines():
            m = re.fullmatch(r"([A-Za-z_]\w*):\s*(.*?)\s*", line)
            if m and m.group(2):
                try:
                    doc[m.group(1)] = json.loads(m.group(2))
                except json.JSONDecodeError:
                    doc[m.group(1)] = m.group(2).strip("'")
        return doc
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise InteropError(f"{path}: not a YAML mapping")
    return doc


def import_circuit_tracer(folder: str | Path, *, norm_weights: Mapping[int, np.ndarray] | None = None
                          ) -> dict[int, RawTranscoder]:
    """{layer: RawTranscoder} acting on jaxdict's mlp_in.L from a circuit-tracer transcoder folder.

    Layers that the exporter padded (listed in config.yaml's jaxdict section) are left out. A
    folder whose input hook is ln2.hook_normalized needs `norm_weights[L]` (1 + w) to unfold.
    """
    from safetensors.numpy import load_file

    folder = Path(folder).expanduser()
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise InteropError(f"{folder}: no {CONFIG_FILE}; not a circuit-tracer transcoder folder")
    doc = _read_config(cfg_path)
    if doc.get("model_kind", "transcoder_set") != "transcoder_set":
        raise InteropError(f"{cfg_path}: model_kind {doc.get('model_kind')!r}; only per-layer "
                           "'transcoder_set' is supported (not cross-layer transcoders)")
    hook = doc.get("feature_input_hook")
    if hook not in INPUT_HOOKS:
        raise InteropError(f"{cfg_path}: feature_input_hook {hook!r}; valid: {', '.join(INPUT_HOOKS)}")
    if doc.get("feature_output_hook") != OUTPUT_HOOK:
        raise InteropError(f"{cfg_path}: feature_output_hook {doc.get('feature_output_hook')!r}; "
                           f"jaxdict's mlp_out.L is {OUTPUT_HOOK!r}")
    ours = doc.get("jaxdict") or {}
    padded = set(ours.get("padded_layers", []))
    files = {int(m.group(1)): p for p in folder.iterdir() if (m := _LAYER_FILE.fullmatch(p.name))}
    if not files:
        raise InteropError(f"{folder}: no layer_<L>.safetensors files")
    out = {}
    for layer in sorted(set(files) - padded):
        t = load_file(str(files[layer]))
        where = str(files[layer])
        missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec") if k not in t]
        if missing:
            raise InteropError(f"{where}: missing tensors {missing}")
        W_enc, W_skip = t["W_enc"].T.astype(np.float64), t.get("W_skip")
        W_skip = None if W_skip is None else W_skip.T.astype(np.float64)
        if not INPUT_HOOKS[hook]:
            if norm_weights is None or layer not in norm_weights:
                raise InteropError(f"{cfg_path}: input hook {hook!r} excludes the norm weight; pass "
                                   f"norm_weights[{layer}] (1 + w of layer {layer}'s pre-FFN norm) to "
                                   "map it onto mlp_in")
            W_enc, W_skip = _unfold(W_enc, W_skip, norm_weights[layer], layer)
        arrays = {"W_enc": W_enc, "b_enc": t["b_enc"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
        if THRESHOLD_KEY in t:
            arrays["threshold"] = t[THRESHOLD_KEY]
        if W_skip is not None:
            arrays["W_skip"] = W_skip
        arch = "jumprelu" if THRESHOLD_KEY in t else "relu_l1"
        # A BatchTopK exports as its JumpReLU inference form; our provenance section restores the name.
        if arch == "jumprelu" and (ours.get("layers") or {}).get(str(layer), {}).get("arch") == "batchtopk":
            arch = "batchtopk"
        fields = transcoder_fields(arch, arrays["W_enc"], arrays["W_dec"], W_skip is not None)
        out[layer] = RawTranscoder(fields, as_float32(arrays), f"mlp_in.{layer}", f"mlp_out.{layer}",
                                   doc.get("model_name"), where).check()
    return out
