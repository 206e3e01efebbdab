"""SAELens's own train step at the same shapes, for side-by-side ratios (optional extra: sae-lens).

Mirrors `SAETrainer._train_step` of SAELens 6.x: `training_forward_pass` with the trainer's
coefficients and dead-neuron mask, the firing bookkeeping, `loss.backward()`, grad-norm clip at 1,
Adam step, zero_grad. Imported lazily: torch is never a dependency of jaxdict's core.
"""
from __future__ import annotations

import time
from typing import Any


def saelens_available() -> bool:
    try:
        import sae_lens  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def measure_saelens_step(arch: str, d_in: int, n_features: int, batch_size: int, k: int = 64,
                         l1_coeff: float = 5.0, warmup: int = 2, iters: int = 5, seed: int = 0,
                         dead_ids=None) -> dict[str, Any]:
    """Median seconds of SAELens's train step. `dead_ids`: latents its dead-neuron mask marks dead
    on every step, so its TopK's AuxK runs as in a run's steady state (bench/steady_state.py)."""
    import numpy as np
    import sae_lens
    import torch
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(seed)
    if arch == "relu_l1":
        cfg = sae_lens.StandardTrainingSAEConfig(d_in=d_in, d_sae=n_features, l1_coefficient=l1_coeff)
        sae = sae_lens.StandardTrainingSAE(cfg)
        coefficients = {"l1": l1_coeff}
    elif arch == "topk":
        cfg = sae_lens.TopKTrainingSAEConfig(d_in=d_in, d_sae=n_features, k=k)
        sae = sae_lens.TopKTrainingSAE(cfg)
        coefficients = {}
    else:
        raise ValueError(f"SAELens side-by-side supports relu_l1 and topk, not {arch!r}")
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((batch_size, d_in), dtype=np.float32))
    dead = torch.zeros(n_features, dtype=torch.bool)
    if dead_ids is not None and len(dead_ids):
        dead[torch.as_tensor(np.asarray(dead_ids), dtype=torch.long)] = True
    since_fired = torch.zeros(n_features)

    def one_step():
        sae.train()
        out = sae.training_forward_pass(
            step_input=TrainStepInput(sae_in=x, coefficients=coefficients, dead_neuron_mask=dead,
                                      n_training_steps=0, is_logging_step=False)
        )
        with torch.no_grad():
            did_fire = out.feature_acts.bool().float().sum(-2).bool()
            since_fired.add_(1)
            since_fired[did_fire] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(warmup):
        one_step()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        one_step()
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    return {"library": f"sae_lens {sae_lens.__version__}", "torch": torch.__version__, "arch": arch,
            "dead_frac": float(dead.float().mean()),
            "threads": torch.get_num_threads(), "step_s_median": median, "tokens_per_s": batch_size / median}
