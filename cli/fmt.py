"""Numbers and times as people read them: "22.5 GiB", "3m ago", "1h 05m" — pure."""

from __future__ import annotations

import math
from datetime import UTC, datetime

CLOCK_SKEW_SECONDS = 60
"""How far the server's clock may be ahead of ours before a time shows as "in the future"."""
_SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def real(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def size(num_bytes: object) -> str:
    """1024-based, one decimal where it matters: 24159191040 -> '22.5 GiB', 512 -> '512 B'
    ('-' for anything that is not a number)."""
    value = real(num_bytes)
    if value is None:
        return "-"
    for unit in _SIZE_UNITS:
        if abs(value) < 1024 or unit == _SIZE_UNITS[-1]:
            if unit == "B":
                return f"{int(value)} B"
            return f"{f'{value:.1f}'.removesuffix('.0')} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def duration(span: object) -> str:
    """A span at the precision that matters: '0.4s', '45s', '3m 12s', '2h 05m', '3d 4h'."""
    seconds = real(span)
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.1f}".removesuffix(".0") + "s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def parse_time(value: object) -> datetime | None:
    """An API timestamp (ISO 8601; naive ones are UTC) or None for anything else."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def now() -> datetime:
    return datetime.now(UTC)


def age(value: object, at: datetime | None = None) -> str:
    """How long ago: 'just now', '45s ago', '3m ago', '2h ago', '5d ago' ('-' when unknown)."""
    when = parse_time(value)
    if when is None:
        return "-"
    seconds = ((at or now()) - when).total_seconds()
    if seconds < -CLOCK_SKEW_SECONDS:
        return "in the future"  # a clock well ahead of ours: say so, not "-3m ago"
    if seconds < 2:
        return "just now"
    if seconds < 60:
        return f"{int(seconds)}s ago"
    if seconds < 3600:
        return f"{int(seconds // 60)}m ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h ago"
    return f"{int(seconds // 86400)}d ago"


def between(start: object, end: object, at: datetime | None = None) -> float | None:
    """Seconds from `start` to `end` (to now when `end` is missing); None without a start."""
    began = parse_time(start)
    if began is None:
        return None
    ended = parse_time(end) or at or now()
    return (ended - began).total_seconds()


def percent(fraction: object) -> str:
    value = real(fraction)
    if value is None:
        return "-"
    return f"{max(0.0, min(1.0, value)) * 100:.0f}%"


def number(value: object) -> str:
    """A metric value: integers as they are, floats with 4 significant digits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"
