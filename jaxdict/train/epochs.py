"""How many times a run reads its training split, and a warning when that is more than once.

The loader repeats the data forever (jaxdict.data.ActivationLoader), so a run asked for more tokens
than its training split holds silently trains several epochs, while the scaling fits assume one
(DESIGN.md §4). The sweep runner and `jaxdict train` warn before training; results.csv records the
epochs of every run.
"""
from __future__ import annotations

import functools
import json

from jaxdict.scaling.compute import epochs, repeat_warning
from jaxdict.train.config import RunConfig


@functools.lru_cache(maxsize=64)
def _train_rows(data_json: str, sae_json: str, clt_json: str = "null") -> int:
    from jaxdict.train.run_setup import open_sources

    cfg = RunConfig.from_dict({"data": json.loads(data_json), "sae": json.loads(sae_json), "clt": json.loads(clt_json)})
    if cfg.clt is not None:
        from jaxdict.clt.train_setup import open_clt_sources

        return int(open_clt_sources(cfg).train.n_rows)
    return int(open_sources(cfg).train.n_rows)


def train_split_rows(cfg: RunConfig) -> int:
    """Rows of `cfg`'s training split (the store's, or the planted data's); cached per data config."""
    d = cfg.to_dict()
    return _train_rows(json.dumps(d["data"], sort_keys=True), json.dumps(d["sae"], sort_keys=True),
                       json.dumps(d["clt"], sort_keys=True))


def run_epochs(cfg: RunConfig, tokens: float | None = None) -> float:
    """Epochs of the training split that `tokens` (default: the whole run) amount to."""
    return epochs(cfg.tokens if tokens is None else tokens, train_split_rows(cfg))


def warn_if_repeats(cfg: RunConfig, log) -> float:
    """Log a warning when `cfg` as configured reads its training split more than once; returns
    its planned epochs."""
    rows = train_split_rows(cfg)
    message = repeat_warning(cfg.run.name, cfg.tokens, rows)
    if message is not None:
        log(message)
    return epochs(cfg.tokens, rows)
