"""CLTConfig: the shape and training choices of a cross-layer transcoder.

Sources for the choices (cited where used):
- Ameisen et al. 2025, "Circuit Tracing: Revealing Computational Graphs in Language Models"
  (transformer-circuits.pub/2025/attribution-graphs/methods.html), §"Building an Interpretable
  Replacement Model": features of layer l read the residual stream at l and write to the MLP outputs
  of every l' >= l; loss = Σ_l' ‖ŷ_l' − y_l'‖² + λ Σ_l Σ_i tanh(c · ‖W_dec,i^l‖ · a_i^l), where
  ‖W_dec,i^l‖ is the norm of feature i's decoder vectors concatenated over all its output layers;
  JumpReLU activations.
- Gao et al. 2024 (TopK) and Bussmann et al. 2024 (BatchTopK) for the fixed-sparsity activations.
"""
from __future__ import annotations

import dataclasses

ARCHS = ("jumprelu", "topk", "batchtopk")
# "tanh": Ameisen et al. 2025's penalty; "l1": its untransformed form λ Σ a_i ‖W_dec,i‖ (Anthropic,
# "Circuits Updates — April 2024"), both with the concatenated decoder norm; "l0_target": jaxdict's
# JumpReLU recipe (jaxdict/sae/jumprelu_recipe.py, after Gemma Scope 2's quadratic L0 penalty),
# λ·(L0/T − 1)² on the mean per-layer L0, through the Heaviside STE of Rajamanoharan et al. 2024.
PENALTIES = ("tanh", "l1", "l0_target")


class CLTConfigError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class CLTConfig:
    """n_layers L, d_model d (resid_mid and mlp_out share it), n_features F per layer.

    k: TopK / BatchTopK active features per token *per layer* (BatchTopK: k·B per layer per batch).
    sparsity_coeff λ and tanh_scale c: JumpReLU's penalty (c = 4 as jaxdict's SAE tanh penalty).
    jumprelu_bandwidth ε and init_threshold θ₀: Rajamanoharan et al. 2024's STE kernel width and
    start; the defaults are jaxdict's isotropic-input values (jaxdict.sae.jumprelu_recipe: ε = 0.1·σ_z
    with σ_z = 1 for unit encoder rows on E‖x‖² = d inputs, θ₀ = ε).
    decode: "sparse" (TopK only: gathers the k active rows of every decoder) or "dense".
    decoder_span S: how many output layers each feature writes to, l … min(l + S, L) − 1; None = all
    l' ≥ l (a CLT). S = 1 gives per-layer transcoders reading resid_mid.l, trained by the same code on
    the same rows: the baseline Ameisen et al. 2025 compare CLTs against ("per-layer transcoders").
    """

    n_layers: int
    d_model: int
    n_features: int
    arch: str = "jumprelu"
    k: int | None = None
    penalty: str = "tanh"
    sparsity_coeff: float = 1e-3
    tanh_scale: float = 4.0
    jumprelu_bandwidth: float = 0.1
    init_threshold: float = 0.1
    threshold_ema_decay: float = 0.99
    decode: str = "dense"
    target_l0: float | None = None
    decoder_span: int | None = None

    def __post_init__(self):
        for name in ("n_layers", "d_model", "n_features"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise CLTConfigError(f"{name} must be a positive int, got {value!r}")
        if self.arch not in ARCHS:
            raise CLTConfigError(f"arch {self.arch!r}; valid: {', '.join(ARCHS)}")
        if self.arch in ("topk", "batchtopk"):
            if not isinstance(self.k, int) or not 1 <= self.k <= self.n_features:
                raise CLTConfigError(f"arch {self.arch!r} needs k in [1, n_features={self.n_features}], "
                                     f"got {self.k!r}")
        elif self.k is not None:
            raise CLTConfigError(f"k={self.k} is for topk/batchtopk; arch {self.arch!r} takes sparsity_coeff")
        if self.penalty not in PENALTIES:
            raise CLTConfigError(f"penalty {self.penalty!r}; valid: {', '.join(PENALTIES)}")
        if (self.penalty == "l0_target") != (self.target_l0 is not None):
            raise CLTConfigError(f"penalty 'l0_target' needs target_l0 (active features per token per layer) and "
                                 f"target_l0 needs that penalty; got penalty={self.penalty!r}, target_l0={self.target_l0!r}")
        if self.target_l0 is not None and not self.target_l0 > 0:
            raise CLTConfigError(f"target_l0 must be > 0, got {self.target_l0!r}")
        for name in ("tanh_scale", "jumprelu_bandwidth", "init_threshold"):
            if not getattr(self, name) > 0:
                raise CLTConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.sparsity_coeff < 0:
            raise CLTConfigError(f"sparsity_coeff must be >= 0, got {self.sparsity_coeff!r}")
        if not 0 <= self.threshold_ema_decay < 1:
            raise CLTConfigError(f"threshold_ema_decay must be in [0, 1), got {self.threshold_ema_decay!r}")
        if self.decode not in ("dense", "sparse"):
            raise CLTConfigError(f"decode {self.decode!r}; valid: dense, sparse")
        if self.decoder_span is not None and not (isinstance(self.decoder_span, int)
                                                  and 1 <= self.decoder_span <= self.n_layers):
            raise CLTConfigError(f"decoder_span must be an int in [1, n_layers={self.n_layers}] or None (all later "
                                 f"layers), got {self.decoder_span!r}")
        if self.decode == "sparse" and self.arch != "topk":
            raise CLTConfigError(f"decode='sparse' is implemented for arch 'topk' only (got {self.arch!r}): "
                                 "BatchTopK's per-token count varies, use decode='dense'")

    def span(self, layer: int) -> int:
        """Output layers of source layer `layer`'s decoder: L − l, capped at decoder_span."""
        return min(self.n_layers - layer, self.decoder_span or self.n_layers)

    @property
    def n_decoder_blocks(self) -> int:
        """Σ_l span(l) blocks of F × d: L(L+1)/2 for a full CLT (171 for Gemma 3 270M's 18 layers), L for
        per-layer transcoders (decoder_span 1)."""
        return sum(self.span(layer) for layer in range(self.n_layers))
