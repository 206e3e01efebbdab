"""jaxdict: sparse autoencoders (dictionary learning) on language-model activations, in JAX.

Public entry points are imported lazily so that `import jaxdict` stays cheap:

    import jaxdict
    lm = jaxdict.lm.load("gemma3-270m")
    sae = jaxdict.load_sae("runs/my-run")
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY_SUBMODULES = {"lm", "sae", "store", "data", "train", "evaluate", "scaling", "testing", "harvest"}


def load_sae(path: str, **kwargs: Any):
    """Load an SAE from a training checkpoint folder or an exported SAE folder (see jaxdict.sae.io)."""
    from jaxdict.sae.io import load_sae as _load_sae

    return _load_sae(path, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"jaxdict.{name}")
    raise AttributeError(f"module 'jaxdict' has no attribute {name!r}")
