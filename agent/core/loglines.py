"""One line of container output as it travels from the runtime to the job log — pure.

Shared by the runtime's stream parser and the job log writer, so neither depends on the other.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

__all__ = [
    "MAX_LINE_BYTES",
    "RFC3339",
    "RawLine",
    "normalize_match",
    "normalize_timestamp",
    "truncated",
]

MAX_LINE_BYTES: Final = 64 * 1024
"""Longest text (bytes) kept for one line; the rest is dropped and the line says how much."""

RawLine = tuple[str, bytes, bytes]
"""(stream, timestamp, text): stream is "stdout", "stderr" or "engine"; the timestamp is UTC
RFC 3339 with nine fractional digits (30 bytes); text has no trailing newline. A plain tuple
because millions of them pass through per minute."""

RFC3339: Final = re.compile(
    rb"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2}) "
)


def normalize_timestamp(value: str) -> str | None:
    """``value`` as UTC with nine fractional digits, or None if it is not RFC 3339."""
    match = RFC3339.fullmatch(value.strip().encode("ascii", "replace") + b" ")
    if match is None:
        return None
    return normalize_match(match)


def normalize_match(match: re.Match[bytes]) -> str | None:
    base, fraction, zone = (part.decode() if part else "" for part in match.groups())
    try:
        moment = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    base = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{fraction.ljust(9, '0')}Z"


def truncated(text: bytes, dropped: int) -> bytes:
    """``text`` with a visible note of how many bytes were cut from its end."""
    return text + f" …[truncated {dropped} bytes]".encode() if dropped else text
