"""Steering methods compared by steer-eval, all acting at the SAE's hook on every position after BOS.

At strength s, with r = max_i · ‖W_dec,i‖ the norm a clamp to 1× max adds where the chosen feature
i is silent (the reference norm):

    feature-clamp   f_i := s · max_i, error term kept (Templeton et al. 2024): adds (s·max_i − f_i(x))·W_dec,i
    feature-add     x + s · max_i · W_dec,i (the same direction, added whatever f_i(x) is)
    diffmean        x + s · r · u, u = unit(mean act on dev target tokens − on dev alternative tokens)
    random-feature  a random live feature j clamped to s · max_j
    random-direction x + s · r · u, u a random unit vector (seeded): a direction of the same norm
    prompting       no edit: the suite's prefix is put before the prompt (one point, no strength)

Clamp versus added vector: a clamp *sets* the value, so where the feature already fires at f_i(x)
it adds only (s·max_i − f_i(x))·W_dec,i, less than an added vector of the same s, and can even
subtract. feature-add isolates that difference; all methods share the reference norm r at equal s
(diffmean and random-direction add exactly s·r; feature-add adds s·r; feature-clamp at most s·r
plus f_i(x)·‖W_dec,i‖ removed), and the comparison that does not depend on s at all is behaviour at
matched KL to the unsteered model.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxdict.evaluate.steering import add_vector_edit, steering_edit
from jaxdict.sae.inference import SAE

METHODS = ("feature-clamp", "feature-add", "diffmean", "random-feature", "random-direction", "prompting")


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    feature: int | None = None  # clamp methods
    unit: np.ndarray | None = None  # add methods: a unit direction
    scale: float = 0.0  # add methods: the norm added at strength 1
    prefix_ids: tuple[int, ...] = ()  # prompting

    def edits(self, sae: SAE, strength: float) -> dict[str, Any] | None:
        if self.name == "prompting":
            return None
        if self.feature is not None and self.unit is None:
            value = float(strength) * float(sae.max_activations[self.feature])
            return steering_edit(sae, [self.feature], [value])
        vector = jnp.asarray(self.unit * (float(strength) * self.scale), jnp.float32)
        return {sae.hook: (add_vector_edit(), vector)}

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        if self.feature is not None:
            d["feature"] = int(self.feature)
        if self.unit is not None:
            d["added_norm_per_strength"] = float(self.scale)
        if self.prefix_ids:
            d["prefix_tokens"] = len(self.prefix_ids)
        return d


def reference_norm(sae: SAE, feature: int) -> float:
    """max_i · ‖W_dec,i‖: what a clamp to 1× max adds where feature i is silent."""
    return float(sae.max_activations[feature]) * float(np.linalg.norm(np.asarray(sae.params.W_dec[feature])))


def unit(v: np.ndarray, what: str) -> np.ndarray:
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n == 0:
        raise ValueError(f"{what} is zero or not finite; cannot make a steering direction")
    return (np.asarray(v, np.float64) / n).astype(np.float32)


def random_live_feature(sae: SAE, exclude: int, seed: int) -> int:
    """A feature with a positive max activation, other than `exclude`, drawn with `seed`."""
    live = np.flatnonzero(np.asarray(sae.max_activations) > 0)
    live = live[live != exclude]
    if len(live) == 0:
        raise ValueError("no other live feature (max activation > 0) to use as the random-feature baseline")
    return int(np.random.default_rng(seed).choice(live))


def build_methods(sae: SAE, feature: int, diffmean: np.ndarray, prefix_ids: tuple[int, ...] | None,
                  seed: int) -> list[Method]:
    """The compared methods around the chosen feature (chosen and DiffMean computed on dev only)."""
    r = reference_norm(sae, feature)
    rng = np.random.default_rng(seed)
    methods = [
        Method("feature-clamp", feature=feature),
        Method("feature-add", feature=feature, unit=unit(np.asarray(sae.params.W_dec[feature]), "the decoder row"),
               scale=r),
        Method("diffmean", unit=unit(diffmean, "the DiffMean vector"), scale=r),
        Method("random-feature", feature=random_live_feature(sae, feature, seed)),
        Method("random-direction", unit=unit(rng.normal(size=sae.d_in), "a random vector"), scale=r),
    ]
    if prefix_ids:
        methods.append(Method("prompting", prefix_ids=tuple(prefix_ids)))
    return methods
