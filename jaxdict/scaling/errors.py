"""The one error type of the scaling package: input that cannot be fitted, with the reason."""
from __future__ import annotations


class ScalingInputError(ValueError):
    """A results table or fit request that cannot be used; the message names the bad value."""
