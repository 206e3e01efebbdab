"""Saving the train state during training. The layout (folders, items, format version) and the
reading side belong to `jaxdict.run_layout`; which TrainState field goes into which item, and
`load_or_init_state` (restore or initialise a run member), to `jaxdict.train.state`.
"""
from __future__ import annotations

from jaxdict import run_layout as layout
from jaxdict.run_layout import CHECKPOINT_DIR, all_steps, latest_step, make_manager  # noqa: F401
from jaxdict.train.state import TrainState, to_items as sae_to_items


def save(manager, step: int, state: TrainState, data_iter: dict, config: dict, force: bool = True,
         to_items=None) -> bool:
    """Start an (asynchronous) save of `state` at `step`; see `run_layout.save`. The device arrays
    are copied before this returns, so the caller may donate `state` to the next step right away.
    `to_items`: the state's checkpoint items (default: an SAE TrainState's; a CLT run passes
    jaxdict.clt.train_state.clt_to_items)."""
    items = (to_items or sae_to_items)(state)
    return layout.save(manager, step, items[layout.PARAMS], items[layout.STATE], data_iter, config, force)
