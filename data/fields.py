"""Declared ranges of config dataclass fields: `bounded(default, lo, hi)` states one, `check_fields` checks them.

The lowest layer, so every package's config dataclass can declare its ranges; run/loader.py's from_dict checks
the same ranges for config files and `section.key=value` overrides.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from data.errors import InputError

RANGE = "range"  # dataclasses.field metadata key of a declared range


def short(value: Any, limit: int = 60) -> str:
    """repr() of a config value for an error line, cut at `limit` characters (a value may be huge or nested)."""
    if isinstance(value, (dict, list, tuple)) and len(value) > 8:  # never walk a big container: kind and size
        return f"a {type(value).__name__} of {len(value)} item(s)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


@dataclasses.dataclass(frozen=True)
class Range:
    """A closed or half-open interval for a number (or for each item of a tuple of numbers)."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False
    max_items: Optional[int] = None  # for a tuple/list field: at most this many items

    def __str__(self) -> str:
        lo = "-inf" if self.lo is None else _number(self.lo)
        hi = "inf" if self.hi is None else _number(self.hi)
        left = "(" if self.lo_open or self.lo is None else "["
        right = ")" if self.hi_open or self.hi is None else "]"
        return f"{left}{lo}, {hi}{right}"

    def holds(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return self.hi is None or (value < self.hi or (not self.hi_open and value == self.hi))


def _number(x: float) -> str:
    x = int(x) if float(x).is_integer() else x
    if isinstance(x, int) and x >= 2 ** 16 and x & (x - 1) == 0:
        return f"2^{x.bit_length() - 1}"
    return str(x)


def bounded(default: Any, lo: Optional[float] = None, hi: Optional[float] = None, *,
            lo_open: bool = False, hi_open: bool = False, max_items: Optional[int] = None) -> Any:
    """A dataclass field whose value (each item, for a tuple) must lie in the range; from_dict checks it.

    lr: float = bounded(2e-4, lo=0, lo_open=True)  ->  lr in (0, inf)
    """
    mutable = isinstance(default, (list, dict))
    factory = {"default_factory": lambda: type(default)(default)} if mutable else {"default": default}
    return dataclasses.field(**factory, metadata={RANGE: Range(lo, hi, lo_open, hi_open, max_items)})


def check_range(value: Any, field: dataclasses.Field, where: str) -> None:
    """InputError naming `where` when `value` (or an item of it) lies outside the field's declared range."""
    bounds = field.metadata.get(RANGE)
    if bounds is None or value is None:
        return
    items = value if isinstance(value, (tuple, list)) else (value,)
    if bounds.max_items is not None and len(items) > bounds.max_items:
        raise InputError(where, f"expected at most {bounds.max_items} items, got {len(items)}")
    for item in items:
        if isinstance(item, (int, float)) and not isinstance(item, bool) and not bounds.holds(item):
            kind = "a number" if isinstance(field.default, float) or isinstance(item, float) else "an integer"
            got = short(item) if len(items) == 1 else f"{short(item)} in {short(value)}"
            span = "a finite number" if bounds.lo is None and bounds.hi is None else f"{kind} in {bounds}"
            raise InputError(where, f"expected {span}, got {got}")


def check_fields(obj: Any, prefix: str = "") -> None:
    """Every declared range of dataclass `obj`; called by __post_init__, so direct construction is checked too."""
    for field in dataclasses.fields(obj):
        check_range(getattr(obj, field.name), field, f"{prefix}.{field.name}" if prefix else field.name)
