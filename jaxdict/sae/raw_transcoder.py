"""`RawTranscoder`: a transcoder (or SAE) as plain numpy arrays in raw activation units, the
common currency of the circuit-tracer exporter and the Gemma Scope importers.

Maths (scales already folded in; Dunefsky et al. 2024, Paulo et al. 2025 for the skip term):

    z = x_in W_enc + b_enc                       (transcoders: no b_dec subtracted first)
    f = act(z)      relu_l1: ReLU(z); jumprelu and batchtopk (inference): z·H(z − θ);
                    topk: the k largest z, ReLU'd
    ŷ = f W_dec + b_dec + x_in W_skip            (W_skip only for a skip transcoder)

Shapes: W_enc [d_in, F], b_enc [F], W_dec [F, d_out], b_dec [d_out], threshold [F] (jumprelu,
batchtopk), W_skip [d_in, d_out] — the field names of jaxdict's SAEConfig / SAEParams, so that
`SAEConfig(**raw.fields)` and `SAEParams(**raw.arrays)` build the jaxdict objects.

An ordinary SAE (`output_hook` None, d_out None: target = input) keeps our SAE convention
instead: z = (x − b_dec) W_enc + b_enc for every arch but relu_l1 (jaxdict.sae.forward).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

ARCHS = ("relu_l1", "topk", "batchtopk", "jumprelu")


class InteropError(ValueError):
    """A file cannot be imported or exported; the message names the path or value at fault."""


@dataclasses.dataclass(frozen=True)
class RawTranscoder:
    """fields: SAEConfig keyword arguments (arch, d_in, n_features, d_out, skip_connection, k).
    arrays: float32 numpy arrays named as SAEParams' fields. input_hook / output_hook: jaxdict
    hook names (e.g. "mlp_in.9", "mlp_out.9"; output_hook None for an SAE); model: jaxdict model
    name or Hugging Face id, None if unknown; source: where it came from."""

    fields: dict[str, Any]
    arrays: dict[str, np.ndarray]
    input_hook: str | None = None
    output_hook: str | None = None
    model: str | None = None
    source: str = ""

    @property
    def arch(self) -> str:
        return self.fields["arch"]

    @property
    def is_transcoder(self) -> bool:
        return self.fields.get("d_out") is not None

    def check(self) -> "RawTranscoder":
        """Raise InteropError unless the arrays have the shapes the fields promise; returns self."""
        f, where = self.fields, self.source or "transcoder"
        if f.get("arch") not in ARCHS:
            raise InteropError(f"{where}: arch {f.get('arch')!r} is not one of {', '.join(ARCHS)}")
        d_in, F = int(f["d_in"]), int(f["n_features"])
        d_out = int(f["d_out"]) if f.get("d_out") is not None else d_in
        want = {"W_enc": (d_in, F), "b_enc": (F,), "W_dec": (F, d_out), "b_dec": (d_out,)}
        if f["arch"] in ("jumprelu", "batchtopk"):
            want["threshold"] = (F,)
        if f.get("skip_connection"):
            want["W_skip"] = (d_in, d_out)
        for name, shape in want.items():
            if name not in self.arrays:
                raise InteropError(f"{where}: missing array {name!r} (needed for arch {f['arch']!r}"
                                   f"{', skip connection' if name == 'W_skip' else ''})")
            if tuple(self.arrays[name].shape) != shape:
                raise InteropError(f"{where}: {name} has shape {tuple(self.arrays[name].shape)}, "
                                   f"expected {shape} for d_in={d_in}, n_features={F}, d_out={d_out}")
        extra = sorted(set(self.arrays) - set(want))
        if extra:
            raise InteropError(f"{where}: arrays {extra} are not used by arch {f['arch']!r} "
                               f"with skip_connection={bool(f.get('skip_connection'))}")
        if f["arch"] == "topk" and not 1 <= int(f.get("k", 0)) < F:
            raise InteropError(f"{where}: topk needs 1 <= k < n_features={F}, got k={f.get('k')!r}")
        return self


def transcoder_fields(arch: str, W_enc: np.ndarray, W_dec: np.ndarray, skip: bool,
                      k: int | None = None) -> dict[str, Any]:
    """SAEConfig fields of a transcoder with these weight shapes."""
    fields: dict[str, Any] = {"arch": arch, "d_in": int(W_enc.shape[0]), "n_features": int(W_enc.shape[1]),
                              "d_out": int(W_dec.shape[1]), "skip_connection": bool(skip)}
    if k is not None:
        fields["k"] = int(k)
    return fields


def as_float32(arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in arrays.items()}


def encode_reference(raw: RawTranscoder, x: np.ndarray) -> np.ndarray:
    """f [B, F] of raw inputs x [B, d_in] by the formula above, in float64 numpy: an independent
    statement of the maths for tests (jaxdict's own encoder is jaxdict.sae.inference)."""
    a = {k: v.astype(np.float64) for k, v in raw.arrays.items()}
    x = np.asarray(x, np.float64)
    if not raw.is_transcoder and raw.arch != "relu_l1":
        x = x - a["b_dec"]
    z = x @ a["W_enc"] + a["b_enc"]
    if raw.arch == "relu_l1":
        return np.maximum(z, 0.0)
    if raw.arch in ("jumprelu", "batchtopk"):
        return z * (z > a["threshold"])
    kth = -np.sort(-z, axis=-1)[:, raw.fields["k"] - 1: raw.fields["k"]]
    return np.where((z >= kth) & (z > 0), z, 0.0)


def decode_reference(raw: RawTranscoder, f: np.ndarray, x: np.ndarray) -> np.ndarray:
    """ŷ [B, d_out] from latents f and the inputs x (for the skip term), float64 numpy."""
    a = {k: v.astype(np.float64) for k, v in raw.arrays.items()}
    y = np.asarray(f, np.float64) @ a["W_dec"] + a["b_dec"]
    if "W_skip" in a:
        y = y + np.asarray(x, np.float64) @ a["W_skip"]
    return y


def raw_from_sae(sae: Any) -> RawTranscoder:
    """A loaded jaxdict SAE or transcoder (jaxdict.sae.inference.SAE, raw units) as a RawTranscoder.

    A transcoder's target hook is `sae.target_hook`."""
    cfg, p = sae.cfg, sae.params
    d_out = getattr(cfg, "d_out", None)
    skip = bool(getattr(cfg, "skip_connection", False))
    fields: dict[str, Any] = {"arch": cfg.arch, "d_in": cfg.d_in, "n_features": cfg.n_features}
    if d_out is not None:
        fields.update(d_out=d_out, skip_connection=skip)
    if cfg.arch == "topk":
        fields["k"] = cfg.k
    arrays = {"W_enc": p.W_enc, "b_enc": p.b_enc, "W_dec": p.W_dec, "b_dec": p.b_dec}
    if p.threshold is not None:
        arrays["threshold"] = p.threshold
    if getattr(p, "W_skip", None) is not None:
        arrays["W_skip"] = p.W_skip
    target = (getattr(sae, "target_hook", None) or (sae.extra or {}).get("target_hook")) if d_out is not None else None
    return RawTranscoder(fields, as_float32(arrays), sae.hook, target, sae.model, sae.source).check()


def sae_from_raw(raw: RawTranscoder) -> Any:
    """The jaxdict SAE (jaxdict.sae.inference.SAE) of a RawTranscoder, to evaluate or re-export."""
    import jax.numpy as jnp

    from jaxdict.sae.config import SAEConfig
    from jaxdict.sae.inference import SAE
    from jaxdict.sae.params import SAEParams

    raw.check()
    cfg = SAEConfig(**raw.fields)
    params = SAEParams(**{k: jnp.asarray(v) for k, v in raw.arrays.items()})
    target = {"target_hook": raw.output_hook} if raw.output_hook else {}
    if "target_hook" in {f.name for f in dataclasses.fields(SAE)}:
        return SAE(cfg=cfg, params=params, model=raw.model, hook=raw.input_hook, source=raw.source, **target)
    return SAE(cfg=cfg, params=params, model=raw.model, hook=raw.input_hook, source=raw.source, extra=target)
