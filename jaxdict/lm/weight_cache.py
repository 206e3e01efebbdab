"""On-disk cache of dequantised weights: one folder per source file, written atomically.

Layout of an entry `<cache root>/lm/<key>/`: `config.json` (Gemma3Config), `tokenizer.model`
(serialised SentencePiece ModelProto), `params/<flat.name>.npy` (float32, model layout), and
`source.json`. An entry is built in a sibling temporary folder and renamed into place, so a process
killed half-way leaves either no entry or a complete one, never a partial one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxdict.lm.config import Gemma3Config

# Bump when the cached param layout or config fields change, so old entries are not misread.
FORMAT_VERSION = 1
Params = dict[str, Any]  # {"embed", "final_norm", "layers": [ {name: array} ]}


def cache_root() -> Path:
    """`$JAXDICT_CACHE`, else `$XDG_CACHE_HOME/jaxdict`, else `~/.cache/jaxdict`."""
    if os.environ.get("JAXDICT_CACHE"):
        return Path(os.environ["JAXDICT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jaxdict"


def flatten_params(params: Params) -> dict[str, np.ndarray]:
    flat = {"embed": params["embed"], "final_norm": params["final_norm"]}
    for i, layer in enumerate(params["layers"]):
        for name, value in layer.items():
            flat[f"layers.{i}.{name}"] = value
    return flat


def unflatten_params(flat: dict[str, Any], n_layers: int) -> Params:
    layers: list[dict[str, Any]] = [{} for _ in range(n_layers)]
    for key, value in flat.items():
        if key.startswith("layers."):
            _, i, name = key.split(".", 2)
            layers[int(i)][name] = value
    return {"embed": flat["embed"], "final_norm": flat["final_norm"], "layers": layers}


def entry_dir(key: str) -> Path:
    return cache_root() / "lm" / key


def read_entry(key: str) -> tuple[Gemma3Config, bytes, Params] | None:
    """The cached (config, tokenizer proto, params as read-only memory maps), or None if absent."""
    d = entry_dir(key)
    if not (d / "source.json").exists():  # written last: its presence marks a complete entry
        return None
    config = Gemma3Config.from_json(json.loads((d / "config.json").read_text()))
    proto = (d / "tokenizer.model").read_bytes()
    flat = {p.stem: np.load(p, mmap_mode="r") for p in sorted((d / "params").glob("*.npy"))}
    return config, proto, unflatten_params(flat, config.n_layers)


def write_entry(key: str, config: Gemma3Config, proto: bytes, params: Params,
                source: dict[str, Any]) -> None:
    final = entry_dir(key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=final.parent))
    try:
        (tmp / "params").mkdir()
        for name, value in flatten_params(params).items():
            np.save(tmp / "params" / f"{name}.npy", np.ascontiguousarray(value, dtype=np.float32))
        (tmp / "config.json").write_text(json.dumps(config.to_json(), indent=1))
        (tmp / "tokenizer.model").write_bytes(proto)
        (tmp / "source.json").write_text(json.dumps(source, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "source.json").exists():  # not a lost race with another process
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def cached(key: str, build: Callable[[], tuple[Gemma3Config, bytes, Params, dict[str, Any]]]
           ) -> tuple[Gemma3Config, bytes, Params]:
    """Read the entry `key`, building and writing it first when it is missing."""
    hit = read_entry(key)
    if hit is not None:
        return hit
    config, proto, params, source = build()
    write_entry(key, config, proto, params, source)
    hit = read_entry(key)
    assert hit is not None
    return hit
