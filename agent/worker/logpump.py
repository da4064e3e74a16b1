"""Pump one container's output into its job log until the engine has delivered all of it.

The job log must be complete: an attempt is not finished (nor its writer closed) until the
engine's stream has ended on its own after the container exited. A stream that breaks or
stalls is reopened from the last timestamp written (lines at that timestamp already written
are skipped, so none is doubled); only when that keeps failing does the pump give up, and then
the log's last line and the attempt's reason say what is missing — never silence.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from agent.core.errors import TrainyardError
from agent.core.loglines import RawLine
from agent.joblog import JobLogWriter, count_container_lines_since

log = logging.getLogger("trainyard.agent")

MAX_STREAM_FAILURES = 4
"""Stream breaks or stalls in a row (without a byte of progress) before the pump gives up."""


class LogSource(Protocol):
    """What the pump needs of a runtime's log stream (DockerRunner.open_logs returns one)."""

    bytes_read: int

    def __iter__(self) -> Iterator[list[RawLine]]: ...

    def close(self) -> None: ...

    @property
    def closed(self) -> bool: ...


OpenLogs = Callable[[str, str | None], LogSource]

_JSON_OVERHEAD = 60
"""Bytes the engine's json-file adds per line beyond what the stream carries (estimate)."""


@dataclass(frozen=True)
class DrainReport:
    complete: bool
    lines: int  # container lines written by this pump
    detail: str = ""  # why the log is incomplete, for the attempt's reason


class LogPump:
    """Owns the streaming thread of one attempt. `start()`, then `finish()` after the exit."""

    def __init__(
        self,
        open_logs: OpenLogs,
        container_id: str,
        writer: JobLogWriter,
        *,
        since: str | None,
        attempt: int,
        on_lines: Callable[[list[RawLine]], None] | None = None,
        stall_seconds: float = 30.0,
        retry_pause: float = 0.5,
        engine_rotation_bytes: int | None = None,
        read_engine_copy: OpenLogs | None = None,
        read_engine_tail: Callable[[str], RawLine | None] | None = None,
    ) -> None:
        self._open = open_logs
        self._container_id = container_id
        self._writer = writer
        self._since = since
        self._attempt = attempt
        self._on_lines = on_lines
        self._stall_seconds = stall_seconds
        self._retry_pause = retry_pause
        self._rotation_bytes = engine_rotation_bytes
        self._read_engine_copy = read_engine_copy
        self._read_engine_tail = read_engine_tail
        self._first_ts = b""
        self._exited = threading.Event()
        self._abandoned = threading.Event()
        self._stream: LogSource | None = None
        self._stream_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name=f"logs-{container_id[:12]}", daemon=True
        )
        self._complete = False
        self._failures: list[str] = []
        self._lines = 0
        self.bytes_read = 0  # across every stream this pump opened: its progress counter
        self.last_stderr: deque[str] = deque(maxlen=5)
        self.last_lines: deque[str] = deque(maxlen=5)  # of either stream: a stall's context

    def start(self) -> None:
        self._thread.start()

    def container_exited(self) -> None:
        """From here on a stream that ends on its own has delivered everything."""
        self._exited.set()

    def abandon(self) -> None:
        """Stop reading at once and do not reopen (the agent is leaving the container alone)."""
        self._abandoned.set()
        self._close_stream()

    def finish(self) -> DrainReport:
        """Wait until the engine has delivered every line (call after the container exited).

        There is no fixed deadline: while bytes keep arriving the pump keeps reading. A stream
        that delivers nothing for `stall_seconds` is closed and reopened from the resume point.
        """
        self._exited.set()
        seen, since_progress = -1, time.monotonic()
        while self._thread.is_alive():
            self._thread.join(0.25)
            if self.bytes_read != seen:
                seen, since_progress = self.bytes_read, time.monotonic()
            elif time.monotonic() - since_progress >= self._stall_seconds:
                log.warning(
                    "job log of %s: no data for %.0fs after the exit; reopening the stream",
                    self._container_id[:12],
                    self._stall_seconds,
                )
                self._close_stream()
                since_progress = time.monotonic()
        if self._abandoned.is_set():
            return DrainReport(True, self._lines)
        detail = self._incomplete_detail() if not self._complete else self._verify_rotation()
        if not detail:
            return DrainReport(True, self._lines)
        self._writer.agent(detail, attempt=self._attempt)
        return DrainReport(False, self._lines, detail)

    # --- the streaming thread --------------------------------------------------------------

    def _run(self) -> None:
        since = self._since
        while not self._abandoned.is_set():
            before = self.bytes_read
            ended = self._stream_once(since)
            if ended == "complete" or self._abandoned.is_set():
                return
            if self.bytes_read != before:
                self._failures.clear()  # progress: only failures in a row count
            self._failures.append(ended)
            if len(self._failures) >= MAX_STREAM_FAILURES:
                return
            # Reopen from what the file holds: the engine replays from that timestamp and
            # the writer skips the lines it already has.
            point = self._writer.resume_point()
            self._writer.skip_through(point)
            since = docker_since(point[0]) or self._since
            self._abandoned.wait(self._retry_pause)

    def _stream_once(self, since: str | None) -> str:
        """Read one stream to its end; "complete", or why it ended early."""
        try:
            stream = self._open(self._container_id, since)
        except TrainyardError as exc:
            return f"could not open the log stream: {exc}"
        with self._stream_lock:
            self._stream = stream
        if self._abandoned.is_set():
            stream.close()
        base = self.bytes_read
        try:
            for batch in stream:
                self._write(batch)
                self.bytes_read = base + stream.bytes_read
        except TrainyardError as exc:
            return f"the log stream broke: {exc}"
        finally:
            self.bytes_read = base + stream.bytes_read
            closed_by_us = stream.closed
            stream.close()
        if closed_by_us:
            return "the log stream stalled"
        # The engine ends a follow stream when the container has ended; if it has not, the
        # stream ended early (an engine restart, a log-file rotation race): reopen it.
        if not self._exited.wait(2.0):
            return "the log stream ended while the container ran"
        if not self._engine_sent_its_last_line():
            return "the log stream ended before the engine had sent everything"
        self._complete = True
        return "complete"

    def _engine_sent_its_last_line(self) -> bool:
        """Docker 20.10 sometimes ends a follow stream of a container that just exited before
        it has sent everything (seen losing the last two thirds of a 5 MB output): the line
        the engine holds last must be one this log has."""
        if self._read_engine_tail is None:
            return True
        try:
            last = self._read_engine_tail(self._container_id)
        except TrainyardError as exc:
            log.warning("job log of %s: cannot confirm its end: %s", self._container_id[:12], exc)
            return True  # nothing better to compare with; the stream did end on its own
        if last is None:
            return True
        written, _ = self._writer.resume_point()
        return written is not None and last[1].decode() <= written

    def _write(self, batch: list[RawLine]) -> None:
        # The engine copies stdout and stderr in two goroutines, so a batch may hold a line of
        # one stream ahead of an earlier line of the other: order by the engine's timestamps
        # (fixed-width, so bytes compare as times; stable, and linear when already in order).
        batch.sort(key=_timestamp)
        if not self._first_ts:
            self._first_ts = batch[0][1]
        self._writer.container_lines(batch)
        self._lines += len(batch)
        errors = [text for stream, _, text in batch if stream == "stderr"]
        self.last_stderr.extend(text.decode("utf-8", "replace") for text in errors[-5:])
        self.last_lines.extend(text.decode("utf-8", "replace") for _, _, text in batch[-5:])
        if self._on_lines is not None:
            self._on_lines(batch)

    def _close_stream(self) -> None:
        with self._stream_lock:
            stream = self._stream
        if stream is not None:
            stream.close()

    def _verify_rotation(self) -> str:
        """Docker before 23.0 drops the unread rest of a json-file when it rotates under a
        follower that lags (moby/moby#37646 and kin). If the engine may have rotated during
        this capture, count what it still holds against what the log got; "" when they agree.
        """
        if self._rotation_bytes is None or self._read_engine_copy is None or self._since:
            return ""
        engine_bytes = self.bytes_read + _JSON_OVERHEAD * self._lines
        if engine_bytes < self._rotation_bytes or not self._first_ts:
            return ""
        try:
            # A follower can also stop at a rotation and see no more: catch up from the
            # last line written (a plain read walks the rotated files in order).
            point = self._writer.resume_point()
            self._writer.skip_through(point)
            with contextlib.closing(
                self._read_engine_copy(self._container_id, docker_since(point[0]))
            ) as stream:
                for batch in stream:
                    self._write(batch)
            held, first = 0, b""
            with contextlib.closing(self._read_engine_copy(self._container_id, None)) as stream:
                for batch in stream:
                    first = first or batch[0][1]
                    held += len(batch)
        except TrainyardError as exc:
            return f"log may be incomplete: the engine rotated its copy; re-reading failed: {exc}"
        if not first:
            return ""
        self._writer.flush()
        have = count_container_lines_since(self._writer.path, first.decode())
        missing = held - have
        if missing <= 0:
            return ""
        return (
            f"log incomplete: {missing} of {held} lines were lost when the engine rotated its "
            "json-file log while the agent was behind (a Docker engine before 23.0 drops "
            "them); raise TRAINYARD_ENGINE_LOG_MAX_SIZE or upgrade the engine"
        )

    def _incomplete_detail(self) -> str:
        timestamp, _ = self._writer.resume_point()
        last = self._failures[-1] if self._failures else "the streaming thread ended"
        return (
            f"log incomplete: the engine's log stream failed {len(self._failures)} times in a "
            f"row (last: {last}); {self._lines} lines captured, the last stamped "
            f"{timestamp or 'never'}; anything the container wrote after that is missing"
        )


def _timestamp(line: RawLine) -> bytes:
    return line[1]


def docker_since(timestamp: str | None) -> str | None:
    """A log timestamp (RFC 3339, 9 fractional digits, UTC) as the engine's `since` value."""
    if timestamp is None:
        return None
    base, _, fraction = timestamp.rstrip("Z").partition(".")
    seconds = int(datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp())
    return f"{seconds}.{fraction.ljust(9, '0')[:9]}"
