"""Docker-style memory sizes ("512m", "4g") to bytes and back — pure."""

from __future__ import annotations

import re

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_memory(value: str | int) -> int:
    """Bytes in a size like Docker's `--memory`: 4g, 512m, 1.5g, 1024k, 2GiB, or plain bytes."""
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("memory must be positive")
        return value
    match = _PATTERN.match(value)
    if not match:
        raise ValueError(
            f"memory {value!r} is not a size; use a number with an optional unit k, m, g or t "
            "(e.g. '512m', '4g')"
        )
    number, unit = match.groups()
    size = int(float(number) * _UNITS[unit.lower()])
    if size <= 0:
        raise ValueError("memory must be positive")
    return size


def format_memory(size: int) -> str:
    """The shortest exact unit form: 4294967296 -> '4g'."""
    for unit in ("t", "g", "m", "k"):
        factor = _UNITS[unit]
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)
