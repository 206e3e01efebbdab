"""Accelerator data sheets: peak dense FLOP/s, HBM size and bandwidth, interconnect bandwidth.

Every number is a vendor's published figure, except where marked DERIVED or ASSUMED:

| chip | bf16 TFLOP/s | HBM | HBM GB/s | ICI GB/s (bidir, per chip) | DCN Gbit/s per chip | source |
|---|---|---|---|---|---|---|
| TPU v4  | 275   | 32 GiB  | 1200 | 537 DERIVED | 25 ASSUMED (as v5e) | cloud.google.com/tpu/docs/v4 |
| TPU v5e | 197   | 16 GiB  | 819  | 400  | 25 (2×100 Gbit/s NIC per 8-chip host) | cloud.google.com/tpu/docs/v5e |
| TPU v5p | 459   | 95 GiB  | 2765 | 1200 | 50 | cloud.google.com/tpu/docs/v5p |
| TPU v6e | 918   | 32 GiB  | 1638 | 800  | 25 ASSUMED (as v5e) | cloud.google.com/tpu/docs/v6e |
| H100 SXM | 989.4 | 80 GB  | 3350 | 900 (NVLink 4) | — | NVIDIA H100 Tensor Core GPU data sheet |
| H200 SXM | 989.4 | 141 GB | 4800 | 900 (NVLink 4) | — | NVIDIA H200 Tensor Core GPU data sheet |

v4's page gives no per-chip ICI figure; 537 GB/s is twice its "all-reduce bandwidth per Pod"
(1.1 PB/s) over 4096 chips — the ratio (all-reduce per chip = ICI/2) that v5e (51.2 TB/s over 256
chips = 200 of 400 GB/s) and v6e (102.4 TB/s / 256 = 400 of 800 GB/s) show on their own pages.
NVIDIA's bf16 figure is the dense one (the data sheets print 1979 TFLOP/s "with sparsity").
HBM as the runtime reports it: v5e's compiler offers 15.75 GiB of its 16 (the rest is reserved).
"""
from __future__ import annotations

import dataclasses
import re

from jaxdict.sae.config import ConfigError

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    bf16_flops: float  # dense peak FLOP/s, bf16 inputs
    fp32_flops: float  # dense peak FLOP/s for float32 matmuls as JAX runs them (TPU: bf16 passes)
    hbm_bytes: float
    hbm_bw: float  # bytes/s
    ici_bw: float  # bidirectional inter-chip bytes/s per chip (NVLink on GPUs)
    dcn_bw: float  # bytes/s per chip between slices (0: not applicable)
    ici_ports: int
    source: str
    kind: str  # "tpu" or "gpu"
    topology_name: str = ""  # jax.experimental.topologies name prefix ("v5e" -> "v5e:2x2")

    def peak_flops(self, compute_dtype: str) -> float:
        return self.bf16_flops if compute_dtype == "bfloat16" else self.fp32_flops


# float32 matmuls on TPU run at the default precision as bf16 passes (1 pass, same peak); we count
# them at the bf16 peak. On H100/H200 JAX's default fp32 matmul precision is TF32: 494.7 TFLOP/s.
CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 275e12, 275e12, 32 * GiB, 1200e9, 2 * 1.1e15 / 4096, 25e9 / 8, 6,
               "cloud.google.com/tpu/docs/v4 (ICI derived from all-reduce BW per pod; DCN assumed as v5e)",
               "tpu", "v4"),
    "v5e": Chip("TPU v5e", 197e12, 197e12, 16 * GiB, 819e9, 400e9, 25e9 / 8, 4,
                "cloud.google.com/tpu/docs/v5e (DCN: 2x100 Gbit/s NIC per 8-chip host)", "tpu", "v5e"),
    "v5p": Chip("TPU v5p", 459e12, 459e12, 95 * GiB, 2765e9, 1200e9, 50e9 / 8, 6,
                "cloud.google.com/tpu/docs/v5p", "tpu", "v5p"),
    "v6e": Chip("TPU v6e", 918e12, 918e12, 32 * GiB, 1638e9, 800e9, 25e9 / 8, 4,
                "cloud.google.com/tpu/docs/v6e (DCN assumed as v5e)", "tpu", "v6e"),
    "h100": Chip("H100 SXM", 989.4e12, 494.7e12, 80e9, 3.35e12, 900e9, 0.0, 18,
                 "NVIDIA H100 Tensor Core GPU data sheet (SXM5: bf16 dense 989.4, TF32 494.7 TFLOP/s)", "gpu"),
    "h200": Chip("H200 SXM", 989.4e12, 494.7e12, 141e9, 4.8e12, 900e9, 0.0, 18,
                 "NVIDIA H200 Tensor Core GPU data sheet (SXM: bf16 dense 989.4, TF32 494.7 TFLOP/s)", "gpu"),
}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice (or several, `num_slices`) named like `v5e:2x2` or `v5p:4x4x4`, `v5e:16x16*2`."""

    chip: Chip
    dims: tuple[int, ...]
    num_slices: int = 1

    @property
    def chips_per_slice(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    @property
    def n_chips(self) -> int:
        return self.chips_per_slice * self.num_slices

    @property
    def name(self) -> str:
        base = f"{self.chip.topology_name or self.chip.name.lower().replace(' ', '')}:{'x'.join(map(str, self.dims))}"
        return base + (f"*{self.num_slices}" if self.num_slices > 1 else "")

    @property
    def hosts(self) -> int:
        """Hosts in the job: 4 chips per host on v4/v5p, 8 on v5e/v6e slices of >= 8 chips
        (Cloud TPU docs' slice tables), one host for smaller slices; GPUs: 8 per host."""
        per_host = 4 if self.chip.topology_name in ("v4", "v5p") else 8
        return max(1, self.chips_per_slice // per_host) * self.num_slices


_TOPO_RE = re.compile(r"^(?P<chip>[a-z0-9]+):(?P<dims>\d+(x\d+)*)(\*(?P<slices>\d+))?$")


def parse_topology(text: str) -> Topology:
    """`v5e:2x2`, `v5p:2x2x2`, `v5e:16x16*4` (4 slices), `h200:8` (8 GPUs)."""
    m = _TOPO_RE.match(text.strip().lower())
    if not m or m.group("chip") not in CHIPS:
        raise ConfigError(f"topology {text!r}: expected CHIP:AxB[xC][*SLICES] with CHIP in "
                          f"{', '.join(CHIPS)}, e.g. v5e:2x2, v5p:2x2x2, v5e:16x16*2, h200:8")
    chip = CHIPS[m.group("chip")]
    dims = tuple(int(d) for d in m.group("dims").split("x"))
    slices = int(m.group("slices") or 1)
    if any(d < 1 for d in dims) or slices < 1:
        raise ConfigError(f"topology {text!r}: every dimension and the slice count must be >= 1")
    if chip.kind == "tpu":
        want = 3 if chip.topology_name in ("v4", "v5p") else 2
        if len(dims) != want:
            raise ConfigError(f"topology {text!r}: {chip.name} slices have {want} dimensions, "
                              f"e.g. {chip.topology_name}:{'x'.join(['2'] * want)}")
    return Topology(chip, dims, slices)


def chip_for_device_kind(device_kind: str) -> Chip | None:
    """The data sheet of a live device (`jax.devices()[0].device_kind`), None where unknown."""
    kind = device_kind.lower()
    for pattern, key in (("h200", "h200"), ("h100", "h100"), ("v5 lite", "v5e"), ("v5e", "v5e"),
                         ("v5p", "v5p"), ("v5", "v5p"), ("v6", "v6e"), ("v4", "v4")):
        if pattern in kind:
            return CHIPS[key]
    return None
