"""Evaluation of trained SAEs: reconstruction metrics, the SAE spliced into the LM, the feature
explorer and its HTML dashboard, and feature steering. Imports no training code (no optax, grain).

    sae = jaxdict.load_sae("runs/my-run")
    stats = jaxdict.evaluate.metrics.evaluate_activations(sae, batches)
    spliced = jaxdict.evaluate.spliced.sae_splice_metrics(lm, sae, windows)
"""
