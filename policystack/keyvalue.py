"""``key=value`` command-line arguments parsed into a dataclass's fields (``policystack collect``,
``policystack eval``; ``policystack train`` uses Hydra overrides instead).

Field annotations pick the conversion: ``int``, ``float``, ``bool`` (true/false/yes/no/on/off/1/0), ``Path``,
``tuple[...]`` (a comma-separated list, of ints for ``tuple[int, ...]``; ``none`` means empty), anything else
stays a string. Errors name the argument and what was expected. ``parse_int_ranges`` reads lists like ``0-29,40``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def split_key_values(argv: list[str], valid: Iterable[str], prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    """``["episodes=5", "robot.rate_hz=1000"]`` -> ``{"episodes": "5", "robot.rate_hz": "1000"}``: every key
    must be in ``valid`` or start with one of ``prefixes`` (values stay strings)."""
    valid = list(valid)
    out: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ValueError(f"argument {arg!r}: expected key=value")
        if key not in valid and not key.startswith(prefixes):
            extra = "".join(f" or {p}<key>" for p in prefixes)
            raise ValueError(f"unknown argument {key!r}; valid: {', '.join(valid)}{extra}")
        out[key] = value
    return out


def parse_key_values(argv: list[str], cls: type, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """``["episodes=5", "out=d"]`` -> ``{"episodes": 5, "out": Path("d")}`` for dataclass ``cls``."""
    types = {f.name: _annotation(f.type) for f in fields(cls)}
    kwargs = {k: _convert(k, v, types[k]) for k, v in split_key_values(argv, types).items()}
    missing = [k for k in required if k not in kwargs]
    if missing:
        raise ValueError(f"missing required argument(s): {', '.join(k + '=' for k in missing)}")
    return kwargs


def parse_int_ranges(text: str, where: str) -> list[int]:
    """``"30-49"`` -> [30, ..., 49]; ``"0,2,5-7"`` -> [0, 2, 5, 6, 7] (inclusive ranges, in the order
    written, each number once). ``where`` (e.g. "variations") names the argument in errors."""
    out: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        lo, dash, hi = part.partition("-")
        try:
            numbers = range(int(lo), int(hi) + 1) if dash else [int(lo)]
        except ValueError:
            raise ValueError(f"{where}={text!r}: expected numbers and ranges like 30-49 or 0,2,5-9") from None
        if dash and not numbers:
            raise ValueError(f"{where}={text!r}: range {part!r} is empty (write low-high)")
        out += [n for n in numbers if n not in out]
    return out


def _annotation(t: Any) -> str:
    """A field's annotation as written: postponed annotations are strings already."""
    return t if isinstance(t, str) else getattr(t, "__name__", None) if isinstance(t, type) else str(t)


def _convert(key: str, value: str, annotation: str) -> Any:
    if annotation == "int":
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{key}={value!r}: expected an integer") from None
    if annotation == "float":
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{key}={value!r}: expected a number") from None
    if annotation == "bool":
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ValueError(f"{key}={value!r}: expected true or false")
    if annotation == "Path":
        return Path(value)
    if annotation.startswith("tuple"):
        items = tuple(c for c in value.split(",") if c and c != "none")
        if annotation.startswith("tuple[int"):
            try:
                return tuple(int(c) for c in items)
            except ValueError:
                raise ValueError(f"{key}={value!r}: expected comma-separated integers") from None
        return items
    return value
