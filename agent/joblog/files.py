"""The files of one job log: its rotations, reading backwards, and where a writer resumes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from agent.joblog.format import CONTAINER_SOURCES, parse_line

BLOCK = 64 * 1024

_MAX_BACKUPS = 1000

RESUME_WINDOW = 64 * 1024

_RESUME_SCAN_LIMIT = 1024 * 1024


def drop_torn_last_line(path: Path) -> None:
    """A writer killed mid-line leaves a line without its newline; cut it so it is rewritten."""
    try:
        with path.open("r+b") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            keep = line_boundary(fh, size)
            fh.truncate(keep)
    except FileNotFoundError:
        return


def count_container_lines_at(path: Path, timestamp: str | None) -> int:
    """How many container lines near the end of the log carry exactly `timestamp`."""
    if timestamp is None:
        return 0
    count = 0
    consumed = 0
    for candidate in (path, _backup(path, 1)):
        try:
            with candidate.open("rb") as fh:
                for raw in reverse_lines(fh, os.fstat(fh.fileno()).st_size):
                    consumed += len(raw) + 1
                    parsed = parse_line(raw.decode("utf-8", "replace"))
                    if parsed is not None and parsed.source in CONTAINER_SOURCES:
                        if parsed.timestamp == timestamp:
                            count += 1
                        elif parsed.timestamp < timestamp and consumed >= RESUME_WINDOW:
                            return count
        except FileNotFoundError:
            continue
    return count


def count_container_lines_since(path: Path, timestamp: str) -> int:
    """How many container lines of the log (with its rotations) carry `timestamp` or later.

    Reads backwards and stops a window past the first older line (stdout and stderr may
    interleave slightly out of timestamp order)."""
    count = 0
    older_at: int | None = None
    consumed = 0
    for candidate in reversed(rotated_files(path)):
        with candidate.open("rb") as fh:
            for raw in reverse_lines(fh, os.fstat(fh.fileno()).st_size):
                consumed += len(raw) + 1
                parsed = parse_line(raw.decode("utf-8", "replace"))
                if parsed is None or parsed.source not in CONTAINER_SOURCES:
                    continue
                if parsed.timestamp >= timestamp:
                    count += 1
                elif older_at is None:
                    older_at = consumed
                elif consumed - older_at >= RESUME_WINDOW:
                    return count
    return count


def scan_last_container_timestamp(path: Path) -> str | None:
    """Newest container timestamp near the end of ``path``, else of ``path.1``."""
    for candidate in (path, _backup(path, 1)):
        try:
            with candidate.open("rb") as fh:
                found = _newest_container_timestamp(fh, os.fstat(fh.fileno()).st_size)
        except FileNotFoundError:
            continue
        if found is not None:
            return found
    return None


def _newest_container_timestamp(fh: BinaryIO, end: int) -> str | None:
    """Stdout and stderr interleave, so take the max over a window, not just the last line."""
    newest: str | None = None
    consumed = 0
    for raw in reverse_lines(fh, end):
        consumed += len(raw) + 1
        parsed = parse_line(raw.decode("utf-8", "replace"))
        if parsed is not None and parsed.source in CONTAINER_SOURCES:
            newest = max(newest or parsed.timestamp, parsed.timestamp)
        if consumed >= (RESUME_WINDOW if newest else _RESUME_SCAN_LIMIT):
            break
    return newest


def _backup(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index}")


def backup_paths(path: Path) -> Iterator[Path]:
    """Existing ``path.1``, ``path.2``, ... newest first.

    A single missing number is tolerated: while RotatingFileHandler shifts files up there is
    briefly one hole in the sequence.
    """
    missing = 0
    for index in range(1, _MAX_BACKUPS + 1):
        candidate = _backup(path, index)
        if candidate.exists():
            missing = 0
            yield candidate
        else:
            missing += 1
            if missing == 2:
                return


def rotated_files(path: Path) -> list[Path]:
    """Existing files of a log, oldest first: ``path.N`` ... ``path.1``, ``path``."""
    files = list(backup_paths(path))
    files.reverse()
    if path.exists():
        files.append(path)
    return files


def reverse_lines(fh: BinaryIO, end: int) -> Iterator[bytes]:
    """Yield the complete lines of ``fh[:end]`` newest first, without their newlines.

    Reads backwards in blocks; bytes after the last newline (a line still being written) are
    skipped.
    """
    pos = end
    carry = b""
    seen_newline = False
    while pos > 0:
        start = max(0, pos - BLOCK)
        fh.seek(start)
        block = fh.read(pos - start)
        pos = start
        pieces = (block + carry).split(b"\n")
        carry = pieces[0]
        for piece in reversed(pieces[1:]):
            if seen_newline:
                yield piece
            seen_newline = True
    if seen_newline:
        yield carry


def line_boundary(fh: BinaryIO, end: int) -> int:
    """Offset just after the last newline in ``fh[:end]`` (0 if there is none)."""
    pos = end
    while pos > 0:
        start = max(0, pos - BLOCK)
        fh.seek(start)
        found = fh.read(pos - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        pos = start
    return 0


def open_or_none(path: Path) -> BinaryIO | None:
    try:
        return path.open("rb")
    except FileNotFoundError:
        return None


def inode_of(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None
