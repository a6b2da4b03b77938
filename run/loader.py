"""Config loading: nested dataclasses from YAML/JSON plus `section.key=value` CLI overrides.

Strict on purpose: an unknown key or a value of the wrong type is one clear error naming the key,
so a typo never silently trains with a default.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from data.errors import InputError

T = TypeVar("T")
# YAML 1.1 reads 1e-4 and 1.0e30 (no dot or no exponent sign) as strings; they are plain numbers to a user.
FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check/convert one value against a type hint (int, float, str, bool, Optional, tuple, list, dataclass)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error, which names the exact key (e.g. a typo in a section)
            return _coerce(value, options[0], where)
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except InputError as err:
                errors.append(err.problem)
        raise InputError(where, "; ".join(errors))
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise InputError(where, f"expected a mapping for section {hint.__name__}, got {value!r}")
        return from_dict(hint, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise InputError(where, f"expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise InputError(where, f"expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise InputError(where, f"expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise InputError(where, f"expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and FLOAT_TEXT.fullmatch(value.strip()) and math.isfinite(float(value)):
            return float(value)
        raise InputError(where, f"expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise InputError(where, f"expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass `cls` from a dict; unknown keys and wrong types raise InputError naming the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"{where}.{unknown[0]}", f"unknown key; expected one of {', '.join(sorted(names))}")
    kwargs = {key: _coerce(value, hints[key], f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise InputError(where, str(err)) from None


def to_dict(cfg: Any) -> dict:
    """Plain dict of a dataclass config (tuples become lists, ready for YAML/JSON)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def read_config_file(path: str | Path) -> dict:
    """YAML or JSON file -> dict, parsed safely (yaml.safe_load never executes code)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(path, f"not valid YAML/JSON: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(path, "expected a mapping of sections at the top level")
    return data


def apply_override(data: dict, override: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (1e-4, true, [1, 2])."""
    if "=" not in override:
        raise InputError(f"override {override!r}", "expected KEY=VALUE, e.g. train.lr=1e-4")
    key, raw = override.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise InputError(f"override {override!r}", "empty key")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(f"override {key}", f"{part!r} is not a section")
    node[parts[-1]] = value


def deep_merge(base: dict, extra: dict) -> dict:
    """Recursively merge `extra` into a copy of `base` (sections merge, values replace)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict | None = None) -> T:
    """Defaults of `cls`, updated by the file at `path` (or by `base`, e.g. a checkpoint's config), then by CLI
    overrides."""
    data = read_config_file(path) if path else json.loads(json.dumps(base or {}))
    for override in overrides:
        apply_override(data, override)
    return from_dict(cls, data, where=str(path) if path else "config")
