"""Per-job log files: the line format, the rotating writer, tail and follow readers."""

from agent.core.loglines import MAX_LINE_BYTES
from agent.joblog.files import count_container_lines_since, rotated_files
from agent.joblog.format import LogEntry, job_log_path, parse_line
from agent.joblog.reader import (
    LogFollower,
    follow,
    follow_positioned,
    format_position,
    parse_position,
    tail,
)
from agent.joblog.writer import JobLogWriter

__all__ = [
    "MAX_LINE_BYTES",
    "JobLogWriter",
    "LogEntry",
    "LogFollower",
    "count_container_lines_since",
    "follow",
    "follow_positioned",
    "format_position",
    "job_log_path",
    "parse_line",
    "parse_position",
    "rotated_files",
    "tail",
]
