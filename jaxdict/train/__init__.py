"""Training: mesh, train state, optimiser, the pure sharded step (and the driver around it)."""
