"""Generic machinery for frozen-dataclass configs: dict round trips, `key.sub=value` overrides,
loading named configs from Python files or JSON, and diffs between resolved configs.

Nothing here knows which configs exist: `jaxdict.train.config` composes them.

    cfg = load_config_object("experiments/topk_grid.py:tiny")     # whatever the file names
    cfg = apply_overrides(cfg, ["optim.lr=3e-4", "sae.k=32"])     # types from the dataclass fields
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from jaxdict.sae.config import ConfigError


def config_to_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a (nested) dataclass config; tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _field_types(cls: type) -> dict[str, Any]:
    # Modules use `from __future__ import annotations`, so field.type is a string: resolve it.
    return typing.get_type_hints(cls)


def _close(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"{hint} valid keys: {', '.join(valid)}"


def _unknown_key(path: str, name: str, cls: type) -> ConfigError:
    valid = [f.name for f in dataclasses.fields(cls)]
    where = f"{path}.{name}" if path else name
    return ConfigError(f"unknown config key {where!r}{_close(name, valid)}")


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def coerce_value(value: Any, tp: Any, key: str) -> Any:
    """`value` (a string from the command line, or a JSON value) as the field type `tp`."""
    inner, optional = _strip_optional(tp)
    if isinstance(value, str) and optional and value.strip().lower() in ("none", "null"):
        return None
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} = None, but the field is not optional (type {tp})")
    origin = typing.get_origin(inner)
    if origin is typing.Literal:
        choices = typing.get_args(inner)
        for choice in choices:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ConfigError(f"{key} = {value!r}; valid: {', '.join(map(str, choices))}")
    if inner is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key} = {value!r} is not a boolean; use true or false")
    if inner is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r} is not an integer")
        if isinstance(value, int):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} = {value!r} is not an integer") from None
        if number != int(number):
            raise ConfigError(f"{key} = {value!r} is not an integer")
        return int(number)
    if inner is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r} is not a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} = {value!r} is not a number") from None
    if inner is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {value!r} is not a string")
        return value
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(inner) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        return tuple(coerce_value(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(inner):
        if isinstance(value, dict):
            return config_from_dict(inner, value, key)
        raise ConfigError(f"{key} must be a mapping of {inner.__name__} fields, got {value!r}")
    return value


def config_from_dict(cls: type, data: dict, path: str = "") -> Any:
    """Build dataclass `cls` from a (nested) dict, coercing values; unknown keys name close ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        if name not in names:
            raise _unknown_key(path, name, cls)
        key = f"{path}.{name}" if path else name
        kwargs[name] = coerce_value(value, hints[name], key)
    return cls(**kwargs)


def _split_override(item: str) -> tuple[list[str], str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. optim.lr=3e-4)")
    return key.strip().split("."), value


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """A copy of `cfg` with each `a.b.c=value` applied; values coerced to the field's type."""
    for item in overrides:
        parts, value = _split_override(item)
        cfg = _replace_path(cfg, parts, value, "")
    return cfg


def _replace_path(obj: Any, parts: list[str], value: str, path: str) -> Any:
    cls = type(obj)
    name = parts[0]
    if not dataclasses.is_dataclass(obj) or name not in {f.name for f in dataclasses.fields(obj)}:
        if not dataclasses.is_dataclass(obj):
            raise ConfigError(f"config key {path!r} is a value, not a section; cannot set {path}.{name}")
        raise _unknown_key(path, name, cls)
    key = f"{path}.{name}" if path else name
    current = getattr(obj, name)
    if len(parts) > 1:
        if current is None:
            raise ConfigError(f"config section {key!r} is None; set it as a whole first")
        new = _replace_path(current, parts[1:], value, key)
    else:
        if dataclasses.is_dataclass(current):
            try:
                new = config_from_dict(type(current), json.loads(value), key)
            except json.JSONDecodeError:
                raise ConfigError(f"{key} is a section; set its fields ({key}.<field>=...) or give "
                                  f"a JSON object") from None
        else:
            new = coerce_value(value, _field_types(cls)[name], key)
    return dataclasses.replace(obj, **{name: new})


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and v:
            flat.update(flatten(v, key))
        else:
            flat[key] = v
    return flat


def config_diff(old: dict, new: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """Human-readable lines `key: old -> new` for every dotted key that differs."""
    a, b = flatten(old), flatten(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        if any(key == i or key.startswith(i + ".") for i in ignore):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            lines.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return lines


def load_module(path: str | Path) -> types.ModuleType:
    """Import a Python file by path (a config or sweep file outside the package)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    name = f"jaxdict_config_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Experiments import their shared base (`from base import ...`): make siblings importable.
    folder = str(path.resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        if added:
            sys.path.remove(folder)
    return module


def split_spec(spec: str) -> tuple[str, str | None]:
    """'file.py:variant' -> ('file.py', 'variant'); 'file.json' -> ('file.json', None)."""
    path, sep, variant = spec.rpartition(":")
    if sep and path.endswith((".py", ".json")) and variant:
        return path, variant
    return spec, None
