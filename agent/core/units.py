"""Docker-style memory sizes ("512m", "4g") to bytes and back — pure."""

from __future__ import annotations

import re
from decimal import Decimal

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
# Docker's forms (512m, 4g, 2gb) and Kubernetes' binary ones (512Mi, 2Gi, 2GiB): all 1024-based.
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:ib?|b)?|b)?\s*$", re.IGNORECASE)

LARGEST_MEMORY_BYTES = 2**63 - 1
"""The largest size `parse_memory` returns by default: what Docker's API (int64) and the
database's BigInteger column can hold. Callers pass a smaller `maximum` where one applies (a
job's memory: `agent.core.jobs.MAX_MEMORY_BYTES`)."""

_SHOWN_CHARS = 40  # how much of a bad value an error message repeats


def parse_memory(value: str | int, *, maximum: int = LARGEST_MEMORY_BYTES) -> int:
    """Bytes in a size like Docker's `--memory`: 4g, 512m, 1.5g, 1024k, 2GiB, or plain bytes.

    ValueError (with a sentence saying what is allowed) for anything else, for zero or less,
    and for more than `maximum` bytes."""
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("memory must be positive")
        return _at_most(value, value, maximum)
    match = _PATTERN.match(value)
    if not match:
        shown = value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "..."
        raise ValueError(
            f"memory {shown!r} is not a size; use a number with an optional unit k, m, g or t "
            "(e.g. '512m', '4g', '2Gi')"
        )
    number, unit = match.groups()
    unit = unit or ""
    # Decimal, not float: exact, and no OverflowError for a thousand-digit number.
    exact = Decimal(number) * _UNITS[unit.lower()]
    if exact > maximum:
        return _at_most(exact, value.strip(), maximum)
    size = int(exact)
    if size <= 0:
        raise ValueError("memory must be positive")
    return size


def _at_most(size: int | Decimal, shown: str | int, maximum: int) -> int:
    if size > maximum:
        text = str(shown)
        if len(text) > _SHOWN_CHARS:
            text = text[:_SHOWN_CHARS] + "..."
        short = format_memory(maximum)
        limit = f"{short} ({maximum} bytes)" if short != str(maximum) else f"{maximum} bytes"
        raise ValueError(f"memory {text} is more than the maximum of {limit}")
    return int(size)


def format_memory(size: int) -> str:
    """The shortest exact unit form: 4294967296 -> '4g'."""
    for unit in ("t", "g", "m", "k"):
        factor = _UNITS[unit]
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def human_size(size: int) -> str:
    """A size as people read it: 23635508 * 1024 -> '22.5 GiB', 512 -> '512 B'."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(value)} B"
            text = f"{value:.1f}".removesuffix(".0")
            return f"{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
