"""Writing a job log: whole lines, in batches, rotated like RotatingFileHandler."""

from __future__ import annotations

import logging
import logging.handlers
import threading
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self, cast

from agent.core.loglines import MAX_LINE_BYTES, RawLine, normalize_timestamp, truncated
from agent.joblog.files import (
    count_container_lines_at,
    drop_torn_last_line,
    scan_last_container_timestamp,
)
from agent.joblog.format import now_timestamp
from agent.metrics import LOG_BYTES_WRITTEN


def _split_text(text: str) -> list[str]:
    """One piece per physical line: drop one trailing newline, all CRs, split on LF."""
    if text.endswith("\n"):
        text = text[:-1]
    return text.replace("\r", "").split("\n")


def _encode_piece(text: str) -> bytes:
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= MAX_LINE_BYTES:
        return data
    kept = data[:MAX_LINE_BYTES].decode("utf-8", "ignore").encode()
    return truncated(kept, len(data) - len(kept))


_SOURCE_FIELD = {
    "stdout": b" stdout ",
    "stderr": b" stderr ",
    "agent": b" agent  ",
    "engine": b" agent  ",  # the engine's own messages in the stream (stream id 3)
}


class JobLogWriter:
    """Appends a job's whole story to ``logs/jobs/<job_id>.log``.

    Lines are written in batches of whole lines, as bytes, with one flush per batch: the
    container side hands over everything one socket read delivered, so the per-line cost is a
    few tuple operations. Rotation follows ``RotatingFileHandler`` (it does the renaming) and
    only ever happens between whole lines. Safe to use from several threads.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 10 * 1024 * 1024,
        backup_count: int = 5,
    ) -> None:
        if max_bytes < 0 or backup_count < 0:
            raise ValueError("max_bytes and backup_count must not be negative")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_torn_last_line(self.path)
        last = scan_last_container_timestamp(self.path)
        self._last_ts = last.encode() if last else b""
        self._lines_at_last = count_container_lines_at(self.path, last)
        self._skip: tuple[bytes, int] | None = None
        self._lock = threading.RLock()
        self._closed = False
        self._max_bytes = max_bytes if backup_count > 0 else 0  # as RotatingFileHandler
        self._handler = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
        )
        self._size = self.path.stat().st_size
        self.container_lines_written = 0
        self.bytes_written = 0

    @property
    def last_container_timestamp(self) -> str | None:
        """Newest Docker timestamp written (normalized), to resume streaming after a restart."""
        return self._last_ts.decode() or None

    def resume_point(self) -> tuple[str | None, int]:
        """(newest container timestamp written, how many container lines carry exactly it)."""
        with self._lock:
            return self._last_ts.decode() or None, self._lines_at_last

    def skip_through(self, point: tuple[str | None, int]) -> None:
        """Drop container lines already written before `point`: used when re-attaching to a
        container whose logs are replayed from that timestamp, so no line is written twice."""
        timestamp, count = point
        with self._lock:
            self._skip = (timestamp.encode(), count) if timestamp is not None else None

    def agent(self, message: str, *, attempt: int | None = None) -> None:
        """Write an agent message stamped with the current UTC time."""
        prefix = "" if attempt is None else f"[attempt {attempt}] "
        head = now_timestamp().encode() + _SOURCE_FIELD["agent"]
        data = b"".join(
            head + _encode_piece(prefix + piece) + b"\n" for piece in _split_text(message)
        )
        with self._lock:
            self._write_block(data)

    def container(self, stream: str, timestamp: str, text: str) -> None:
        """Write container output given as text; ``timestamp`` is RFC 3339 (Docker's).

        A timestamp that does not parse is replaced by the previous container timestamp (the
        current time when there is none).
        """
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
        normalized = normalize_timestamp(timestamp)
        with self._lock:
            # A timestamp that does not parse takes the previous one, so the file (what a
            # reopened writer reads) and this writer always agree on the resume point.
            written = normalized or self.last_container_timestamp or now_timestamp()
            stamp = written.encode()
            self.container_lines(
                [(stream, stamp, _encode_piece(piece)) for piece in _split_text(text)]
            )

    def container_lines(self, lines: list[RawLine]) -> None:
        """Write a batch of container lines as the engine delivered them (see logframes)."""
        if not lines:
            return
        with self._lock:
            if self._skip is not None:
                lines = self._drop_replayed(lines)
            parts: list[bytes] = []
            last, at_last = self._last_ts, self._lines_at_last
            source = _SOURCE_FIELD
            for stream, ts, text in lines:
                if ts > last:
                    last, at_last = ts, 1
                elif ts == last:
                    at_last += 1
                parts += (ts, source[stream], text, b"\n")
            data = b"".join(parts)
            if data.count(b"\n") != len(lines) or b"\r" in data:
                data = _clean_block(lines)
            if not data.isascii():
                data = data.decode("utf-8", "replace").encode()
            self._write_block(data)
            self._last_ts, self._lines_at_last = last, at_last
            self.container_lines_written += len(lines)

    def _drop_replayed(self, lines: list[RawLine]) -> list[RawLine]:
        kept = []
        for line in lines:
            if self._skip is not None and self._already_written(line[1]):
                continue
            kept.append(line)
        return kept

    def _already_written(self, timestamp: bytes) -> bool:
        assert self._skip is not None
        until, remaining = self._skip
        if timestamp < until:
            return True
        if timestamp == until and remaining > 0:
            self._skip = (until, remaining - 1)
            return True
        self._skip = None  # past the resume point: everything from here on is new
        return False

    def _write_block(self, data: bytes) -> None:
        """Append whole lines; roll over between lines exactly where RotatingFileHandler would
        (before a line that would pass max_bytes, never leaving an empty file behind)."""
        if self._closed:
            raise ValueError(f"log writer for {self.path} is closed")
        stream = self._binary_stream()
        total = len(data)
        while data:
            room = self._max_bytes - self._size
            if not self._max_bytes or len(data) <= room:
                stream.write(data)
                self._size += len(data)
                break
            cut = data.rfind(b"\n", 0, max(room, 0)) + 1
            if cut == 0:
                if self._size > 0:
                    stream = self._rollover()
                    continue
                cut = data.find(b"\n") + 1 or len(data)  # one line longer than a whole file
            stream.write(data[:cut])
            self._size += cut
            data = data[cut:]
            if data:
                stream = self._rollover()
        stream.flush()
        self.bytes_written += total
        LOG_BYTES_WRITTEN.inc(total)

    def _rollover(self) -> BinaryIO:
        self._binary_stream().flush()
        self._handler.doRollover()
        self._size = 0
        return self._binary_stream()

    def _binary_stream(self) -> BinaryIO:
        """The handler's file underneath its text layer (which this writer never uses)."""
        stream = self._handler.stream
        assert stream is not None
        return cast(BinaryIO, stream.buffer)

    def flush(self) -> None:
        with self._lock:
            if not self._closed:
                self._handler.flush()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._handler.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _clean_block(lines: list[RawLine]) -> bytes:
    """The slow path for text with CRs or embedded newlines: one record per physical line."""
    parts: list[bytes] = []
    for stream, ts, text in lines:
        head = ts + _SOURCE_FIELD[stream]
        parts.extend(head + piece + b"\n" for piece in text.replace(b"\r", b"").split(b"\n"))
    return b"".join(parts)
