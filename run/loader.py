"""Config loading: nested dataclasses from YAML/JSON plus `section.key=value` CLI overrides.

Strict on purpose: an unknown key or a value of the wrong type is one clear error naming the key,
so a typo never silently trains with a default. Float fields are finite (YAML's own `.nan`/`.inf` included), and a
field declared with `bounded(default, lo, hi)` is checked against that range by `from_dict`, the one path both
config files and `section.key=value` overrides take.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

import yaml

from data.errors import InputError, check_regular_file
from data.fields import check_range, short
from data.limits import MAX_CONFIG_BYTES

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
            raise InputError(where, f"expected a mapping for section {hint.__name__}, got {short(value)}")
        return from_dict(hint, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise InputError(where, f"expected a list, got {short(value)}")
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
        raise InputError(where, f"expected true/false, got {short(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise InputError(where, f"expected an integer, got {short(value)}")
    if hint is float:
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if isinstance(value, str) and FLOAT_TEXT.fullmatch(value.strip()):
            number = value
        if isinstance(number, int) and abs(number) >= 2 ** 1024:  # float() would raise OverflowError
            raise InputError(where, f"expected a finite number, got {short(value)}")
        if number is None:
            raise InputError(where, f"expected a finite number, got {short(value)}")
        if not math.isfinite(float(number)):  # YAML's own .nan/.inf too, not only number text
            raise InputError(where, f"expected a finite number, got {short(value)}")
        return float(number)
    if hint is str:
        if isinstance(value, str):
            return value
        raise InputError(where, f"expected a string, got {short(value)}")
    return value


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass `cls` from a dict; unknown keys and wrong types raise InputError naming the key."""
    if not isinstance(data, dict):
        raise InputError(where, f"expected a mapping of keys for {cls.__name__}, got {short(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted((str(key)[:60] for key in set(data) - set(fields)))
    if unknown:
        raise InputError(f"{where}.{unknown[0]}", f"unknown key; expected one of {', '.join(sorted(fields))}")
    kwargs = {key: _coerce(value, hints[key], f"{where}.{key}") for key, value in data.items()}
    for key, value in kwargs.items():
        check_range(value, fields[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        text = str(err)
        raise InputError(where, text if len(text) <= 300 else f"{text[:300]}...") from None


def to_dict(cfg: Any) -> dict:
    """Plain dict of a dataclass config (tuples become lists, ready for YAML/JSON)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


class NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader without anchors/aliases: a 1 kB file of nested aliases expands to gigabytes (a YAML bomb)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"alias *{event.anchor} at line {event.start_mark.line + 1}: anchors and aliases "
                                 "are not accepted in configs; write the value out")
        return super().compose_node(parent, index)


def parse_yaml(text: str) -> Any:
    """YAML text -> Python values: no code (safe loader), no aliases (no bombs)."""
    return yaml.load(text, Loader=NoAliasLoader)


def read_config_file(path: str | Path) -> dict:
    """YAML or JSON file -> dict, parsed safely (no code, no aliases, at most MAX_CONFIG_BYTES)."""
    path = Path(path)
    check_regular_file(path, "a YAML/JSON config file", missing="config file not found")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise InputError(path, f"{path.stat().st_size} bytes; a config file is at most {MAX_CONFIG_BYTES} bytes")
    try:
        data = parse_yaml(path.read_text())
    except UnicodeDecodeError as err:
        raise InputError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
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
        value = parse_yaml(raw)
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
                base: dict | None = None, where: str = "config") -> T:
    """Defaults of `cls`, updated by the file at `path` (or by `base`, e.g. a checkpoint's config, named `where` in
    errors), then by CLI overrides."""
    data = read_config_file(path) if path else json.loads(json.dumps(base or {}))
    for override in overrides:
        apply_override(data, override)
    return from_dict(cls, data, where=str(path) if path else where)
