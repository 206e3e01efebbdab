"""`jaxdict export RUN --out DIR`: write an SAE in the SAELens layout (cfg.json +
sae_weights.safetensors, normalisation folded in); `jaxdict export RUN [RUN...] --format
circuit-tracer --out DIR`: write transcoders (one per layer, mlp_in.L -> mlp_out.L) in circuit-tracer's
per-layer layout (jaxdict/sae/circuit_tracer_io.py), or one cross-layer transcoder run in its CLT layout
(jaxdict/clt/circuit_tracer_io.py, scales folded); `jaxdict export --import PATH --out DIR`: bring
a SAELens folder, a Gemma Scope params.npz or a Gemma Scope 2 params.safetensors in (written back out
in the SAELens layout, with hook and model names translated, so jaxdict commands load it)."""
from __future__ import annotations

import argparse
import re
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="*", default=[],
                        help="training run folder (or any loadable SAE) to export; for circuit-tracer, one "
                             "transcoder per layer, or one CLT run")
    parser.add_argument("--import", dest="import_path", default=None,
                        help="a SAELens folder, Gemma Scope params.npz or Gemma Scope 2 params.safetensors "
                             "(or its folder) to import instead")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--format", default="saelens", choices=("saelens", "circuit-tracer"),
                        help="output layout (saelens; circuit-tracer for transcoders)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--model", default=None, help="model name to record (e.g. gemma3-270m) when the source lacks it")
    parser.add_argument("--hook", default=None, help="hook to record (e.g. resid_post.9) when the source lacks it")
    parser.add_argument("--input-hook", default="mlp.hook_in", choices=("mlp.hook_in", "ln2.hook_normalized"),
                        help="circuit-tracer: the feature input hook; ln2.hook_normalized (TransformerLens "
                             "backend too) folds the model's pre-FFN norm weight into the encoder")
    parser.add_argument("--kind", default=None, choices=("transcoder", "resid_post", "mlp_out"),
                        help="Gemma Scope imports: what the file is, when its path does not say")


def _is_gemma_scope_2(path: Path) -> bool:
    return path.name == "params.safetensors" or (path.is_dir() and (path / "params.safetensors").is_file())


def _import(args: argparse.Namespace):
    """The SAE to write out for --import: Gemma Scope 2 and Gemma Scope transcoders through
    jaxdict.sae.gemma_scope_io, everything else through jaxdict.sae.io.load_sae."""
    import dataclasses

    from jaxdict.sae.gemma_scope_io import load_gemma_scope_2, load_gemma_scope_npz
    from jaxdict.sae.io import load_sae
    from jaxdict.sae.raw_transcoder import sae_from_raw

    path = Path(args.import_path).expanduser()
    raw = None
    if _is_gemma_scope_2(path):
        raw = load_gemma_scope_2(path, args.kind)
    elif path.suffix == ".npz" and (args.kind is not None or "transcoder" in str(path)):
        raw = load_gemma_scope_npz(path, args.kind)
    if raw is None:
        return load_sae(path, args.step, model=args.model, hook=args.hook)
    sae = sae_from_raw(raw)
    return dataclasses.replace(sae, model=args.model or sae.model, hook=args.hook or sae.hook)


def _export_clt(args: argparse.Namespace) -> int:
    """One CLT run folder -> circuit-tracer's CLT layout (scales folded; jaxdict/clt/circuit_tracer_io.py)."""
    from jaxdict.clt.circuit_tracer_io import export_clt_circuit_tracer
    from jaxdict.clt.run import load_clt_run
    from jaxdict.sae.io import HF_MODEL_IDS

    if len(args.run) != 1:
        raise ValueError(f"a CLT is one run folder holding every layer; got {len(args.run)} runs")
    run = load_clt_run(args.run[0], args.step)
    model = args.model or run.model
    out = export_clt_circuit_tracer(args.out, run.params, run.cfg, model_name=HF_MODEL_IDS.get(model, model))
    print(f"wrote {out} (circuit-tracer cross-layer transcoder: {run.cfg.n_layers} layers x {run.cfg.n_features} "
          f"features, {run.cfg.arch}, step {run.step}, model {model})")
    return 0


def _is_clt_run(path: str) -> bool:
    import json

    config = Path(path) / "config.json"
    return config.is_file() and isinstance(json.loads(config.read_text()).get("clt"), dict)


def _export_circuit_tracer(args: argparse.Namespace) -> int:
    import numpy as np

    if any(_is_clt_run(run) for run in args.run):
        return _export_clt(args)

    import jaxdict.lm
    from jaxdict.sae.circuit_tracer_io import export_circuit_tracer
    from jaxdict.sae.io import load_sae
    from jaxdict.sae.raw_transcoder import raw_from_sae

    transcoders = {}
    for run in args.run:
        raw = raw_from_sae(load_sae(run, args.step, model=args.model, hook=args.hook))
        m = re.fullmatch(r"mlp_in\.(\d+)", raw.input_hook or "")
        if m is None:
            raise ValueError(f"{run}: reads {raw.input_hook!r}; circuit-tracer transcoders read mlp_in.L "
                             "(pass --hook mlp_in.L if the run does not record it)")
        if int(m.group(1)) in transcoders:
            raise ValueError(f"{run}: a second transcoder for layer {m.group(1)}; give one run per layer")
        transcoders[int(m.group(1))] = raw
    models = {raw.model for raw in transcoders.values()}
    if len(models) != 1 or None in models:
        raise ValueError(f"the runs record models {sorted(map(str, models))}; give runs of one model "
                         "(or --model NAME)")
    (model,) = models
    lm = jaxdict.lm.load(model)  # its layer count (the replacement model hooks every layer), norm weights
    norms = {L: np.asarray(lm.params["layers"][L]["ffn_norm"]) for L in transcoders}
    from jaxdict.sae.io import HF_MODEL_IDS

    out = export_circuit_tracer(args.out, transcoders, model_name=HF_MODEL_IDS.get(model, model),
                                input_hook=args.input_hook, norm_weights=norms, pad_missing_layers=True,
                                n_layers=lm.config.n_layers)
    print(f"wrote {out} (circuit-tracer transcoder set: layers {sorted(transcoders)} of "
          f"{lm.config.n_layers}, the rest inert; input hook {args.input_hook}, model {model})")
    return 0


def run(args: argparse.Namespace) -> int:
    from jaxdict.sae.io import export_saelens, load_sae

    if bool(args.run) == (args.import_path is not None):
        raise ValueError("give either RUN (to export) or --import PATH (to import), not both")
    if args.format == "circuit-tracer":
        if args.import_path is not None:
            raise ValueError("--format circuit-tracer exports runs; --import writes the SAELens layout")
        return _export_circuit_tracer(args)
    if len(args.run) > 1:
        raise ValueError(f"--format saelens exports one SAE; got {len(args.run)} runs")
    sae = _import(args) if args.import_path else load_sae(args.run[0], args.step, model=args.model, hook=args.hook)
    out = export_saelens(sae, args.out)
    print(f"wrote {out} ({sae.cfg.arch}, d_in={sae.d_in}, n_features={sae.n_features}, "
          f"model={sae.model}, hook={sae.hook})")
    return 0
