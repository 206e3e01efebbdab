"""`jaxdict export RUN --out DIR`: write an SAE in the SAELens layout (cfg.json +
sae_weights.safetensors, normalisation folded in); `jaxdict export --import PATH --out DIR`:
bring a SAELens folder or a Gemma Scope params.npz in (written back out in the same layout,
with hook and model names translated, so jaxdict commands load it)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", default=None,
                        help="training run folder (or any loadable SAE) to export")
    parser.add_argument("--import", dest="import_path", default=None,
                        help="a SAELens folder or Gemma Scope params.npz to import instead")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--format", default="saelens", choices=("saelens",), help="output layout (saelens)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--model", default=None, help="model name to record (e.g. gemma3-270m) when the source lacks it")
    parser.add_argument("--hook", default=None, help="hook to record (e.g. resid_post.9) when the source lacks it")


def run(args: argparse.Namespace) -> int:
    from jaxdict.sae.io import export_saelens, load_sae

    if (args.run is None) == (args.import_path is None):
        raise ValueError("give either RUN (to export) or --import PATH (to import), not both")
    sae = load_sae(args.run or args.import_path, args.step, model=args.model, hook=args.hook)
    out = export_saelens(sae, args.out)
    print(f"wrote {out} ({sae.cfg.arch}, d_in={sae.d_in}, n_features={sae.n_features}, "
          f"model={sae.model}, hook={sae.hook})")
    return 0
