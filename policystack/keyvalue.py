"""``key=value`` command-line arguments parsed into a dataclass's fields (``policystack collect``,
``policystack eval``; ``policystack train`` uses Hydra overrides instead).

Field annotations pick the conversion: ``int``, ``float``, ``bool`` (true/false/yes/no/on/off/1/0), ``Path``,
``tuple[...]`` (a comma-separated list, of ints for ``tuple[int, ...]``; ``none`` means empty), anything else stays a string.
Errors name the argument and what was expected.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_key_values(argv: list[str], cls: type, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """``["episodes=5", "out=d"]`` -> ``{"episodes": 5, "out": Path("d")}`` for dataclass ``cls``."""
    types = {f.name: _annotation(f.type) for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ValueError(f"argument {arg!r}: expected key=value")
        if key not in types:
            raise ValueError(f"unknown argument {key!r}; valid: {', '.join(types)}")
        kwargs[key] = _convert(key, value, types[key])
    missing = [k for k in required if k not in kwargs]
    if missing:
        raise ValueError(f"missing required argument(s): {', '.join(k + '=' for k in missing)}")
    return kwargs


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
