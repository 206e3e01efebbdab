"""SAE architecture configuration: one frozen dataclass, validated on construction."""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

ARCHITECTURES = ("relu_l1", "topk", "batchtopk", "jumprelu")
DecodeMode = Literal["auto", "dense", "sparse"]

# Default ceiling of AuxK's dead-latent buffer (slots). C bounds per-device temporaries: each device
# holds its [B/data, C/m] block of the slots' pre-activations and, for the per-row selection, whole
# rows [B/(data·m), C] (sae/auxk.py, sae/row_topk.py). An earlier design built all [B/data, C] on every
# device before a psum-scatter: with C = F/8 the 16M TopK's plan (B 8192) then needed 176 GB of
# temporaries per v5p chip on any slice (experiments/results/scale_plans.md). Above F = 512k the
# buffer holds a moving window of the dead set (each dead latent is a candidate every
# ⌈n_dead / C⌉ steps).
AUX_CAPACITY_MAX = 1 << 16


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the value and what would be valid."""


def check_finite_fields(obj: object) -> None:
    """Raise ConfigError for any float field of a dataclass that is NaN or infinite."""
    for field in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(
                f"{type(obj).__name__}.{field.name} = {value!r} is not finite; give a finite number"
            )


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """What an SAE is: its shape, its architecture and the hyper-parameters of its loss.

    arch:
      relu_l1   f = ReLU(x W_enc + b_enc); loss ‖x−x̂‖² + λ Σ_i f_i ‖W_dec,i‖ (Anthropic, April 2024)
      topk      keep the k largest pre-activations (Gao et al. 2024), AuxK on dead latents
      batchtopk keep the B·k largest over the batch (Bussmann et al. 2024); JumpReLU at inference
      jumprelu  f = z·H(z−θ), L0 (or tanh) penalty, straight-through estimator (Rajamanoharan et al.)

    matryoshka_prefixes (TopK, BatchTopK): train a Matryoshka SAE (Bussmann et al. 2025; Nabeshima
    2024), whose reconstruction loss is the mean over prefixes m of the MSE of the reconstruction
    from latents [0, m) alone, the selected latents truncated to each prefix (sae/matryoshka.py).
    """

    arch: str = "topk"
    d_in: int = 640
    n_features: int = 16384
    # TopK / BatchTopK: active latents per token.
    k: int = 64
    # ReLU-L1 λ (Scaling Monosemanticity used λ = 5 with inputs scaled so E‖x‖² = d_in).
    l1_coeff: float = 5.0
    # JumpReLU recipe (jaxdict/sae/jumprelu_recipe.py). "l0_target" (default): a quadratic penalty
    # l0_coeff · (L0/target_l0 − 1)² holding the batch L0 at `target_l0` (the quadratic L0-target
    # penalty of Gemma Scope 2, McDougall et al. 2025), θ started where L0 = target_l0 on the first
    # batch; "l0": l0_coeff · L0 (Rajamanoharan et al. 2024); "tanh": l0_coeff · Σ_i tanh(c·f_i‖W_dec,i‖)
    # (Anthropic, Jan 2025). `target_l0` is the only knob the default needs.
    jumprelu_penalty: Literal["l0_target", "l0", "tanh"] = "l0_target"
    target_l0: float | None = None  # None: k (64 by default), at most half of n_features
    # None: derived at the start of a run from the first batch (l0_target: 10 × the data's variance
    # E‖x − μ‖², so the penalty is on the MSE's scale; "l0"/"tanh" have no scale-free default).
    l0_coeff: float | None = None
    # STE kernel width ε and initial θ. None: derived from the spread of the pre-activations at
    # initialisation (ε = 0.1·σ_z; θ₀ = ε, a dense start as Gemma Scope's θ₀ = ε = 0.001), not
    # Gemma Scope's constants, which assume unit-mean-squared-norm inputs (DESIGN.md §4).
    jumprelu_bandwidth: float | None = None
    jumprelu_init_threshold: float | None = None
    # l0_target only: θ's learning rate relative to the other parameters'. 1 (Gemma Scope's single
    # lr): from the dense start the encoder and θ bring L0 down together. A ×30 θ lr (an earlier
    # recipe, for θ₀ at the target) measured 0.914 planted recovery on the unit test's data against
    # 0.985 at ×1 (experiments/results/quality.md).
    jumprelu_threshold_lr_scale: float = 1.0
    # Anthropic's pre-activation loss λ_P Σ_i ReLU(θ_i − z_i)‖W_dec,i‖ (Jan 2025; SAELens ships
    # 3e-6 for inputs with ‖x‖ ≈ √d, our scaling): a small pull on latents that do not fire (l0_target only).
    pre_act_coeff: float = 3e-6
    # tanh penalty sharpness c in tanh(c·|f_i|·‖W_dec,i‖) (Anthropic, Jan 2025 update).
    tanh_scale: float = 4.0
    # AuxK (Gao et al. 2024 App. A.2): k_aux ≈ d_in/2, coefficient 1/32; None means d_in // 2.
    aux_k: int | None = None
    aux_coeff: float = 1.0 / 32.0
    # AuxK picks among at most this many dead latents per step (sae/auxk.py); None means
    # min(F // 8, AUX_CAPACITY_MAX). More dead than this: a window of this many, moving every step.
    aux_capacity: int | None = None
    # ReLU the dead latents picked by AuxK (OpenAI's and sparsify's code do; SAELens does not).
    aux_relu: bool = True
    # A latent is dead when it has not fired for this many tokens (Gao et al.: 10M tokens).
    dead_tokens: int = 10_000_000
    # BatchTopK inference threshold: EMA decay of the smallest positive kept activation per batch.
    threshold_ema_decay: float = 0.99
    # ReLU-L1 decoder init norm 0.1 (Anthropic April 2024 update).
    dec_init_norm: float = 0.1
    # Decoder path for TopK/BatchTopK: "sparse" gathers the k active rows (2·B·d·F + O(B·k·d)
    # FLOPs instead of ~10·B·d·F; BatchTopK lists its B·k winners, see sae/batchtopk_sparse.py);
    # "auto" picks sparse where it measured faster: k ≤ F/64 (TopK), k ≤ F/128 (BatchTopK).
    decode: DecodeMode = "auto"
    # Compute dtype of the matmuls; parameters and optimiser state stay float32.
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    # Matryoshka prefix sizes, strictly increasing, the last = n_features (e.g. (512, 1024, 2048,
    # 4096)). None: one reconstruction loss over all latents, as before this field existed.
    matryoshka_prefixes: tuple[int, ...] | None = None
    # Transcoder (Dunefsky et al. 2024): encode one hook (d_in, e.g. mlp_in.L) and reconstruct
    # another of the same token (d_out, e.g. mlp_out.L): ŷ = W_dec f(W_enc x + b_enc) + b_dec
    # [+ W_skip x]. None: an SAE (the target is the input). A transcoder's batch rows are
    # [x | y] (jaxdict.data.PairedSource), split by jaxdict.sae.transcoder.split_batch.
    d_out: int | None = None
    # Skip transcoder (Paulo et al. 2025, "Transcoders beat sparse autoencoders for
    # interpretability"): adds an affine skip W_skip x, W_skip [d_in, d_out] started at zero.
    skip_connection: bool = False

    def __post_init__(self) -> None:
        check_finite_fields(self)
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"unknown SAE architecture {self.arch!r}; valid: {', '.join(ARCHITECTURES)}")
        for name in ("d_in", "n_features", "dead_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"SAEConfig.{name} = {value!r}; must be a positive integer")
        if self.arch in ("topk", "batchtopk") and not (1 <= self.k < self.n_features):
            raise ConfigError(
                f"SAEConfig.k = {self.k} with n_features = {self.n_features}; need 1 <= k < n_features"
            )
        if self.d_out is not None and (isinstance(self.d_out, bool) or not isinstance(self.d_out, int)
                                       or self.d_out < 1):
            raise ConfigError(f"SAEConfig.d_out = {self.d_out!r}; must be a positive integer (a transcoder's "
                              "target width) or None (an SAE)")
        if self.skip_connection and self.d_out is None:
            raise ConfigError("SAEConfig.skip_connection = True needs a transcoder: set d_out (the target's "
                              "width, e.g. 640 for Gemma 3 270M's mlp_out)")
        if self.aux_k is not None and not (1 <= self.aux_k <= self.n_features):
            raise ConfigError(f"SAEConfig.aux_k = {self.aux_k}; need 1 <= aux_k <= n_features or None")
        if self.aux_capacity is not None and not (1 <= self.aux_capacity <= self.n_features):
            raise ConfigError(
                f"SAEConfig.aux_capacity = {self.aux_capacity}; need 1 <= aux_capacity <= n_features or None"
            )
        if self.decode not in ("auto", "dense", "sparse"):
            raise ConfigError(f"SAEConfig.decode = {self.decode!r}; valid: auto, dense, sparse")
        if self.matryoshka_prefixes is not None:
            # JSON (config.json, an export's cfg.json) gives a list; the config must stay hashable
            # (it is a static argument of jitted functions).
            object.__setattr__(self, "matryoshka_prefixes", check_matryoshka_prefixes(self))
        if self.matryoshka_prefixes is not None and self.arch == "batchtopk" and self.decode == "sparse":
            raise ConfigError(
                "SAEConfig.decode = 'sparse' with matryoshka_prefixes and arch 'batchtopk': the sparse BatchTopK "
                "decoder (sae/batchtopk_sparse.py) returns one reconstruction, not one per prefix; use "
                "decode='auto' or 'dense' (a Matryoshka BatchTopK decodes densely)")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"SAEConfig.compute_dtype = {self.compute_dtype!r}; valid: float32, bfloat16")
        if self.jumprelu_penalty not in ("l0_target", "l0", "tanh"):
            raise ConfigError(f"SAEConfig.jumprelu_penalty = {self.jumprelu_penalty!r}; valid: l0_target, l0, tanh")
        for name in ("l1_coeff", "l0_coeff", "aux_coeff", "pre_act_coeff"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"SAEConfig.{name} = {value}; must be >= 0")
        for name in ("jumprelu_bandwidth", "jumprelu_init_threshold", "dec_init_norm", "tanh_scale",
                     "jumprelu_threshold_lr_scale"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"SAEConfig.{name} = {value}; must be > 0 (or unset, to derive it from the data)")
        if self.arch == "jumprelu" and self.target_l0 is not None and not 0 < self.target_l0 < self.n_features:
            raise ConfigError(f"SAEConfig.target_l0 = {self.target_l0} with n_features = {self.n_features}; "
                              "need 0 < target_l0 < n_features")
        if not 0.0 <= self.threshold_ema_decay < 1.0:
            raise ConfigError(f"SAEConfig.threshold_ema_decay = {self.threshold_ema_decay}; need 0 <= decay < 1")

    @property
    def effective_target_l0(self) -> float:
        """JumpReLU's L0 target: target_l0, else k capped at half the features."""
        return float(self.target_l0) if self.target_l0 is not None else float(min(self.k, self.n_features // 2))

    @property
    def is_transcoder(self) -> bool:
        return self.d_out is not None

    @property
    def output_width(self) -> int:
        """Width of the reconstruction: d_out for a transcoder, d_in for an SAE."""
        return self.d_in if self.d_out is None else self.d_out

    @property
    def batch_width(self) -> int:
        """Columns of a training batch: [x | y] for a transcoder, x for an SAE."""
        return self.d_in + (self.d_out or 0)

    @property
    def has_threshold(self) -> bool:
        return self.arch in ("jumprelu", "batchtopk")

    @property
    def effective_aux_k(self) -> int:
        return min(self.aux_k if self.aux_k is not None else max(1, self.d_in // 2), self.n_features)

    @property
    def effective_aux_capacity(self) -> int:
        if self.aux_capacity is not None:
            return self.aux_capacity
        return max(1, min(self.n_features // 8, AUX_CAPACITY_MAX))

    @property
    def uses_sparse_decode(self) -> bool:
        """Whether TopK / BatchTopK decoding gathers the active decoder rows instead of a dense matmul."""
        if self.arch not in ("topk", "batchtopk") or self.decode == "dense":
            return False
        if self.arch == "batchtopk" and self.matryoshka_prefixes is not None:
            # The sparse BatchTopK decoder's custom VJP yields only the full reconstruction; the
            # prefix blocks are decoded densely (sae/matryoshka.py). TopK's sparse path masks its
            # [B, k] index list per block instead.
            return False
        if self.decode == "sparse":
            return True
        # Sparse costs grow with k (per-row top-k, gathers and scatters), dense ones with F. Measured
        # side by side with `jaxdict bench step` at d_in=640, F=16384, B=4096 on CPU (BENCHMARKS.md),
        # sparse/dense tokens/s: TopK k=64 2.05×, 128 1.58×, 256 1.14×, 512 0.81×, 1024 0.55×;
        # BatchTopK (4·k candidates per row) k=64 1.85×, 128 1.41×, 256 0.86×, 1024 0.67×.
        if self.arch == "topk":
            return self.k * 64 <= self.n_features
        return self.k * 128 <= self.n_features

    @property
    def unit_norm_decoder(self) -> bool:
        """ReLU-L1 keeps the decoder norm inside its penalty (Anthropic April 2024); others fix it."""
        return self.arch != "relu_l1"


def check_matryoshka_prefixes(cfg: SAEConfig) -> tuple[int, ...]:
    """cfg.matryoshka_prefixes as a tuple of ints, or ConfigError naming the bad value."""
    prefixes = cfg.matryoshka_prefixes
    where = f"SAEConfig.matryoshka_prefixes = {prefixes!r}"
    if cfg.arch not in ("topk", "batchtopk"):
        raise ConfigError(f"{where} with arch {cfg.arch!r}; Matryoshka prefixes need arch topk or batchtopk "
                          "(or matryoshka_prefixes=None)")
    if isinstance(prefixes, (str, bytes)) or not hasattr(prefixes, "__iter__"):
        raise ConfigError(f"{where}; give a sequence of prefix sizes, e.g. (512, 1024, {cfg.n_features})")
    values = tuple(prefixes)
    if not values:
        raise ConfigError(f"{where} is empty; give at least one prefix size (the last = n_features "
                          f"{cfg.n_features}) or None")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: {value!r} is not a positive integer")
    for before, after in zip(values, values[1:]):
        if after <= before:
            raise ConfigError(f"{where}: {after} follows {before}; prefix sizes must be strictly increasing")
    if values[-1] != cfg.n_features:
        raise ConfigError(f"{where}: the last prefix is {values[-1]}, but must be n_features = {cfg.n_features} "
                          "(the whole dictionary)")
    return values
