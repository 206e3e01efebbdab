"""What XLA compiles the train step into on this machine's first device: its cost analysis (FLOPs,
bytes accessed), temporaries, and every fusion whose output is at least --min-mb, by size. Made to
explain why the H200 step runs 2-3x slower than the roofline (BENCHMARKS.md, "H200: measured").

    python experiments/gpu_step_profile.py --archs relu_l1,topk --d-in 2304 --features 65536 --batch-size 4096 --out $OUT
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import jax  # noqa: E402
from base import BASE, derive  # noqa: E402

from jaxdict.plan.hlo import computations, shape_bytes  # noqa: E402
from jaxdict.plan.train_plan import lower_train_step  # noqa: E402

_LINE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+(fusion|custom-call|dot|convolution|sort|copy|transpose)\(")


def profile(arch: str, a: argparse.Namespace) -> str:
    cfg = derive(BASE, f"profile-{arch}", sae__arch=arch, sae__d_in=a.d_in, sae__n_features=a.features, sae__k=a.k,
                 sae__compute_dtype=a.dtype, sae__decode=a.decode, data__batch_size=a.batch_size)
    lowered, _ = lower_train_step(cfg, jax.devices()[:1])
    compiled = lowered.compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    mem = compiled.memory_analysis()
    text = compiled.as_text()
    if a.out:
        Path(a.out, f"step_{arch}.hlo.txt").write_text(text)
    # The entry computation's instructions are the buffers the step materialises (a fusion's inner
    # instructions are not); a conditional's branches (TopK's AuxK switch) are not walked.
    comps, entry = computations(text)
    big = []
    for line in comps[entry]:
        m = _LINE.match(line)
        if m and shape_bytes(m.group(2)) >= a.min_mb * 2**20:
            kind = re.search(r"kind=(\w+)", line)
            big.append((shape_bytes(m.group(2)), m.group(1), m.group(3) + (f"/{kind.group(1)}" if kind else ""), m.group(2)[:60]))
    big.sort(reverse=True)
    out = [f"== {arch} ({a.dtype}, decode {a.decode}) on {jax.devices()[0].device_kind}, jax {jax.__version__}",
           f"cost analysis: flops {cost.get('flops', 0):.4g}, bytes accessed {cost.get('bytes accessed', 0) / 1e9:.2f} GB",
           f"temporaries {getattr(mem, 'temp_size_in_bytes', 0) / 2**30:.2f} GiB",
           f"entry instructions with an output >= {a.min_mb} MB: {len(big)}, their outputs {sum(b[0] for b in big) / 1e9:.2f} GB"]
    out += [f"  {b / 1e6:9.1f} MB  {op:22s} {name:40s} {shape}" for b, name, op, shape in big[:40]]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="relu_l1,topk")
    p.add_argument("--d-in", type=int, default=2304)
    p.add_argument("--features", type=int, default=65536)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--decode", default="dense")
    p.add_argument("--min-mb", type=float, default=256.0)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    for arch in a.archs.split(","):
        print(profile(arch, a), flush=True)


if __name__ == "__main__":
    main()
