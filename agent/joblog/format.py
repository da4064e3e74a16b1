"""Per-job log files: writing with size-based rotation, tail and follow.

Every physical line of a job log is one record::

    <timestamp> <source> <text>

``timestamp`` is UTC RFC 3339 with exactly nine fractional digits (30 characters, e.g.
``2026-11-22T10:00:00.123456789Z``), so lines sort and parse the same way whatever produced
them. ``source`` is padded to six characters: ``agent ``, ``stdout`` or ``stderr``. ``text``
never contains a newline or a carriage return.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import NamedTuple

SOURCES = ("agent", "stdout", "stderr")

CONTAINER_SOURCES = frozenset({"stdout", "stderr"})

TIMESTAMP_LEN = 30

TEXT_OFFSET = TIMESTAMP_LEN + 8  # timestamp, space, 6-char source, space

_JOB_ID = re.compile(r"[0-9a-fA-F]{1,128}")

_NORMALIZED = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z")


def job_log_path(log_dir: Path, job_id: str) -> Path:
    """Return ``<log_dir>/jobs/<job_id>.log``; ``job_id`` must be a hex string."""
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"invalid job id {job_id!r}: expected a hex string")
    return log_dir / "jobs" / f"{job_id}.log"


class LogEntry(NamedTuple):
    timestamp: str
    source: str
    text: str


def parse_line(line: str) -> LogEntry | None:
    """Split one log line into its fields, or return None if it is not in the job log format."""
    timestamp = line[:TIMESTAMP_LEN]
    source = line[TIMESTAMP_LEN + 1 : TEXT_OFFSET - 1].rstrip(" ")
    if (
        len(line) < TEXT_OFFSET
        or line[TIMESTAMP_LEN] != " "
        or line[TEXT_OFFSET - 1] != " "
        or source not in SOURCES
        or not _NORMALIZED.fullmatch(timestamp)
    ):
        return None
    return LogEntry(timestamp, source, line[TEXT_OFFSET:])


def now_timestamp() -> str:
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{nanos:09d}Z"
