"""Sub-commands of the `jaxdict` console script, one module each (see jaxdict/cli.py)."""
