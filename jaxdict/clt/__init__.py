"""Cross-layer transcoders (CLTs; Ameisen et al. 2025, "Circuit Tracing"): per-layer encoders over
`resid_mid.l`, decoders from layer l to every MLP output l' >= l, features sharded over `model`."""
