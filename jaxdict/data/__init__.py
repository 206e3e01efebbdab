"""Activation data for training and evaluation: sources (store or numpy) and the Grain loader.

    src = StoreSource("acts/resid_post.9", split="train")
    loader = ActivationLoader(src, global_batch_size=4096, mesh=mesh, seed=0)
    it = iter(loader); batch = next(it)        # jax.Array [4096, d_in], P("data", None)
    state = it.get_state(); it.set_state(state)
    pairs = PairedSource("acts/mlp_in.9", "acts/mlp_out.9", split="train")   # transcoder rows [x | y]
"""
from jaxdict.data.loader import ActivationLoader, LoaderIterator
from jaxdict.data.paired import PairedSource, check_aligned, split_pair
from jaxdict.data.slabs import SlabSource
from jaxdict.data.sources import ArraySource, StoreSource
from jaxdict.data.split import SPLITS, doc_unit_hash, split_mask

__all__ = [
    "SPLITS",
    "ActivationLoader",
    "ArraySource",
    "LoaderIterator",
    "PairedSource",
    "SlabSource",
    "StoreSource",
    "check_aligned",
    "doc_unit_hash",
    "split_mask",
    "split_pair",
]
