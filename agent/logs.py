"""Per-job log files: writing with size-based rotation, tail and follow.

Every physical line of a job log is one record::

    <timestamp> <source> <text>

``timestamp`` is UTC RFC 3339 with exactly nine fractional digits (30 characters, e.g.
``2026-11-22T10:00:00.123456789Z``), so lines sort and parse the same way whatever produced
them. ``source`` is padded to six characters: ``agent ``, ``stdout`` or ``stderr``. ``text``
never contains a newline or a carriage return.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NamedTuple, Self, cast

from agent.runtime.logframes import MAX_LINE_BYTES, RawLine, normalize_timestamp, truncated

__all__ = [
    "MAX_LINE_BYTES",
    "JobLogWriter",
    "LogLine",
    "follow",
    "job_log_path",
    "parse_line",
    "rotated_files",
    "tail",
]

_SOURCES = ("agent", "stdout", "stderr")
_CONTAINER_SOURCES = frozenset({"stdout", "stderr"})
_TIMESTAMP_LEN = 30
_TEXT_OFFSET = _TIMESTAMP_LEN + 8  # timestamp, space, 6-char source, space

_JOB_ID = re.compile(r"[0-9a-fA-F]{1,128}")
_NORMALIZED = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z")

_BLOCK = 64 * 1024
_MAX_BACKUPS = 1000
_RESUME_WINDOW = 64 * 1024
_RESUME_SCAN_LIMIT = 1024 * 1024
_TAIL_ATTEMPTS = 5


def job_log_path(log_dir: Path, job_id: str) -> Path:
    """Return ``<log_dir>/jobs/<job_id>.log``; ``job_id`` must be a hex string."""
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"invalid job id {job_id!r}: expected a hex string")
    return log_dir / "jobs" / f"{job_id}.log"


class LogLine(NamedTuple):
    timestamp: str
    source: str
    text: str


def parse_line(line: str) -> LogLine | None:
    """Split one log line into its fields, or return None if it is not in the job log format."""
    timestamp = line[:_TIMESTAMP_LEN]
    source = line[_TIMESTAMP_LEN + 1 : _TEXT_OFFSET - 1].rstrip(" ")
    if (
        len(line) < _TEXT_OFFSET
        or line[_TIMESTAMP_LEN] != " "
        or line[_TEXT_OFFSET - 1] != " "
        or source not in _SOURCES
        or not _NORMALIZED.fullmatch(timestamp)
    ):
        return None
    return LogLine(timestamp, source, line[_TEXT_OFFSET:])


def _now_timestamp() -> str:
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{nanos:09d}Z"


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
        _drop_torn_last_line(self.path)
        last = _scan_last_container_timestamp(self.path)
        self._last_ts = last.encode() if last else b""
        self._lines_at_last = _count_container_lines_at(self.path, last)
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
        head = _now_timestamp().encode() + _SOURCE_FIELD["agent"]
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
            written = normalized or self.last_container_timestamp or _now_timestamp()
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


def _drop_torn_last_line(path: Path) -> None:
    """A writer killed mid-line leaves a line without its newline; cut it so it is rewritten."""
    try:
        with path.open("r+b") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            keep = _line_boundary(fh, size)
            fh.truncate(keep)
    except FileNotFoundError:
        return


def _count_container_lines_at(path: Path, timestamp: str | None) -> int:
    """How many container lines near the end of the log carry exactly `timestamp`."""
    if timestamp is None:
        return 0
    count = 0
    consumed = 0
    for candidate in (path, _backup(path, 1)):
        try:
            with candidate.open("rb") as fh:
                for raw in _reverse_lines(fh, os.fstat(fh.fileno()).st_size):
                    consumed += len(raw) + 1
                    parsed = parse_line(raw.decode("utf-8", "replace"))
                    if parsed is not None and parsed.source in _CONTAINER_SOURCES:
                        if parsed.timestamp == timestamp:
                            count += 1
                        elif parsed.timestamp < timestamp and consumed >= _RESUME_WINDOW:
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
            for raw in _reverse_lines(fh, os.fstat(fh.fileno()).st_size):
                consumed += len(raw) + 1
                parsed = parse_line(raw.decode("utf-8", "replace"))
                if parsed is None or parsed.source not in _CONTAINER_SOURCES:
                    continue
                if parsed.timestamp >= timestamp:
                    count += 1
                elif older_at is None:
                    older_at = consumed
                elif consumed - older_at >= _RESUME_WINDOW:
                    return count
    return count


def _scan_last_container_timestamp(path: Path) -> str | None:
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
    for raw in _reverse_lines(fh, end):
        consumed += len(raw) + 1
        parsed = parse_line(raw.decode("utf-8", "replace"))
        if parsed is not None and parsed.source in _CONTAINER_SOURCES:
            newest = max(newest or parsed.timestamp, parsed.timestamp)
        if consumed >= (_RESUME_WINDOW if newest else _RESUME_SCAN_LIMIT):
            break
    return newest


def _backup(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index}")


def _backup_paths(path: Path) -> Iterator[Path]:
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
    files = list(_backup_paths(path))
    files.reverse()
    if path.exists():
        files.append(path)
    return files


def _reverse_lines(fh: BinaryIO, end: int) -> Iterator[bytes]:
    """Yield the complete lines of ``fh[:end]`` newest first, without their newlines.

    Reads backwards in blocks; bytes after the last newline (a line still being written) are
    skipped.
    """
    pos = end
    carry = b""
    seen_newline = False
    while pos > 0:
        start = max(0, pos - _BLOCK)
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


def _line_boundary(fh: BinaryIO, end: int) -> int:
    """Offset just after the last newline in ``fh[:end]`` (0 if there is none)."""
    pos = end
    while pos > 0:
        start = max(0, pos - _BLOCK)
        fh.seek(start)
        found = fh.read(pos - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        pos = start
    return 0


def _open(path: Path) -> BinaryIO | None:
    try:
        return path.open("rb")
    except FileNotFoundError:
        return None


Positioned = tuple[str, int, bytes]
"""(the file's identity, offset just past the line's newline, the line without it)."""


def _file_identity(fh: BinaryIO) -> str:
    """Inode plus the digits of the file's first timestamp: inodes are reused once rotation
    deletes old files, a file's first line never changes."""
    head = os.pread(fh.fileno(), _TIMESTAMP_LEN, 0)
    digits = bytes(c for c in head if 0x30 <= c <= 0x39).decode()
    return f"{os.fstat(fh.fileno()).st_ino}.{digits}"


def _collect_tail(path: Path, n: int, head: BinaryIO | None, head_end: int) -> list[str]:
    return [
        line.decode("utf-8", "replace") for _, _, line in _tail_positioned(path, n, head, head_end)
    ]


def _tail_positioned(path: Path, n: int, head: BinaryIO | None, head_end: int) -> list[Positioned]:
    """Newest ``n`` lines of ``head[:head_end]`` and then of the rotated files, oldest first.

    Backups are probed upwards skipping files already read: if a rotation happens meanwhile,
    everything shifts up by one name, so the next unseen file is still the right one.
    """
    newest_first: list[Positioned] = []
    seen: set[int] = set()
    if head is not None:
        seen.add(os.fstat(head.fileno()).st_ino)
        newest_first.extend(_positioned(head, _file_identity(head), head_end, n))
    for backup in _backup_paths(path):
        if len(newest_first) >= n:
            break
        fh = _open(backup)
        if fh is None:
            continue
        with fh:
            stat = os.fstat(fh.fileno())
            if stat.st_ino in seen:
                continue
            seen.add(stat.st_ino)
            wanted = n - len(newest_first)
            newest_first.extend(_positioned(fh, _file_identity(fh), stat.st_size, wanted))
    newest_first.reverse()
    return newest_first


def _positioned(fh: BinaryIO, identity: str, end: int, n: int) -> list[Positioned]:
    """The newest ``n`` complete lines of ``fh[:end]``, newest first, with their end offsets."""
    position = _line_boundary(fh, end)
    out: list[Positioned] = []
    for line in _take(_reverse_lines(fh, position), n):
        out.append((identity, position, line))
        position -= len(line) + 1
    return out


def _take(lines: Iterator[bytes], n: int) -> list[bytes]:
    taken: list[bytes] = []
    for line in lines:
        if len(taken) >= n:
            break
        taken.append(line)
    return taken


def tail(path: Path, n: int) -> list[str]:
    """Last ``n`` complete lines of the log and its rotations, oldest first, without newlines."""
    if n <= 0:
        return []
    head = _open(path)
    if head is None:
        return _collect_tail(path, n, None, 0)
    with head:
        return _collect_tail(path, n, head, os.fstat(head.fileno()).st_size)


def follow(
    path: Path,
    *,
    from_lines: int = 0,
    poll_interval: float = 0.2,
    stop: Callable[[], bool] | None = None,
    idle_timeout: float | None = None,
) -> Iterator[str]:
    """Yield the last ``from_lines`` lines, then every complete line appended, like ``tail -F``.

    Survives rotation (the old file is read to its end before moving to its successor), waits
    for a file that does not exist yet, and holds back a partial last line until it is
    complete. Ends when ``stop()`` is true (after yielding what was already written) or when no
    new data arrived for ``idle_timeout`` seconds. Closing the generator releases the file.
    """
    for _, line in follow_positioned(
        path,
        from_lines=from_lines,
        poll_interval=poll_interval,
        stop=stop,
        idle_timeout=idle_timeout,
    ):
        yield line


def format_position(identity: str, offset: int) -> str:
    """A line's place in a rotating log, stable across rotation (renames keep the file)."""
    return f"{identity}-{offset}"


def parse_position(value: str) -> tuple[str, int] | None:
    identity, sep, offset = value.strip().partition("-")
    inode, dot, digits = identity.partition(".")
    if len(value) > 80 or not (sep and dot and inode.isdigit() and offset.isdigit()):
        return None
    if digits and not digits.isdigit():
        return None
    return identity, int(offset)


def follow_positioned(
    path: Path,
    *,
    from_lines: int = 0,
    after: tuple[str, int] | None = None,
    poll_interval: float = 0.2,
    stop: Callable[[], bool] | None = None,
    idle_timeout: float | None = None,
    heartbeat: float | None = None,
) -> Iterator[tuple[str, str]]:
    """``follow`` with each line's position (see ``format_position``).

    With ``after`` (a position a reader already has, e.g. SSE's Last-Event-ID) the lines come
    from just past it, through rotations, none repeated; ``from_lines`` is then ignored. If
    that file was rotated out of the retained ones, reading starts at the oldest one kept and
    the first item is ``("gap", "")``. With ``heartbeat``, ``("", "")`` comes after that
    many quiet seconds, so a server notices a reader that went away.
    """
    follower = _Follower(Path(path))
    try:
        if after is not None:
            if not follower.resume(*after):
                yield "gap", ""
        else:
            for identity, offset, line in follower.start(from_lines):
                yield format_position(identity, offset), line.decode("utf-8", "replace")
        last_data = last_sent = time.monotonic()
        while True:
            stopping = stop is not None and stop()
            yield from follower.drain()
            if stopping:
                return
            now = time.monotonic()
            if follower.got_bytes:
                last_data = last_sent = now
            elif idle_timeout is not None and now - last_data >= idle_timeout:
                return
            elif heartbeat is not None and now - last_sent >= heartbeat:
                last_sent = now
                yield "", ""
            time.sleep(poll_interval)
    finally:
        follower.close()


class _Follower:
    """State of one ``follow`` call: the open file, its inode and a held-back partial line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh: BinaryIO | None = None
        self.inode = 0
        self.partial = b""
        self.got_bytes = False

    def start(self, from_lines: int) -> list[Positioned]:
        """Open the current file at its last line boundary; return the lines before it."""
        self.fh = _open(self.path)
        if self.fh is None:
            return _tail_positioned(self.path, from_lines, None, 0) if from_lines > 0 else []
        stat = os.fstat(self.fh.fileno())
        self.inode = stat.st_ino
        boundary = _line_boundary(self.fh, stat.st_size)
        lines = _tail_positioned(self.path, from_lines, self.fh, boundary) if from_lines > 0 else []
        self.fh.seek(boundary)
        return lines

    def resume(self, identity: str, offset: int) -> bool:
        """Continue just past a known position; False when that file is no longer kept (then
        start at the oldest file that is)."""
        for candidate in [self.path, *_backup_paths(self.path)]:
            fh = _open(candidate)
            if fh is None:
                continue
            if _file_identity(fh) == identity:
                self._switch(fh)
                fh.seek(min(offset, os.fstat(fh.fileno()).st_size))
                return True
            fh.close()
        files = rotated_files(self.path)
        self._switch(_open(files[0]) if files else None)
        return False

    def drain(self) -> Iterator[tuple[str, str]]:
        """Read everything written so far, following rotations, then return."""
        self.got_bytes = False
        if self.fh is None:
            self._switch(_open(self.path))
        while self.fh is not None:
            yield from self._read_to_end()
            current = _inode(self.path)
            if current == self.inode:
                self._check_truncated()
                return
            # Rotated away (or deleted): anything written before the rename is in our handle.
            yield from self._read_to_end()
            if self.partial:
                position = format_position(_file_identity(self.fh), self.fh.tell())
                yield position, self.partial.decode("utf-8", "replace")
                self.partial = b""
            successor = self._open_successor() if current is not None else None
            if successor is None:
                return  # mid-rotation or deleted: keep the old handle, look again next poll
            self._switch(successor)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None

    def _switch(self, fh: BinaryIO | None) -> None:
        self.close()
        self.fh = fh
        self.partial = b""
        if fh is not None:
            self.inode = os.fstat(fh.fileno()).st_ino

    def _read_to_end(self) -> Iterator[tuple[str, str]]:
        assert self.fh is not None
        while data := self.fh.read(_BLOCK):
            self.got_bytes = True
            buffer = self.partial + data
            position = self.fh.tell() - len(buffer)  # where `buffer` starts in the file
            pieces = buffer.split(b"\n")
            self.partial = pieces.pop()
            identity = _file_identity(self.fh)
            for piece in pieces:
                position += len(piece) + 1
                yield f"{identity}-{position}", piece.decode("utf-8", "replace")

    def _check_truncated(self) -> None:
        assert self.fh is not None
        if os.fstat(self.fh.fileno()).st_size < self.fh.tell():
            self.fh.seek(0)
            self.partial = b""

    def _open_successor(self) -> BinaryIO | None:
        """Open the file written right after ours: the next newer name in the rotation chain.

        The chain is only trusted if no rotation finished while we looked (the current file's
        inode did not change). If our file is gone, the oldest one left is the successor.
        """
        for _ in range(_TAIL_ATTEMPTS):
            before = _inode(self.path)
            if before is None:
                return None
            chain = [(p, _inode(p)) for p in [self.path, *_backup_paths(self.path)]]
            chain = [(p, ino) for p, ino in chain if ino is not None]
            inodes = [ino for _, ino in chain]
            index = inodes.index(self.inode) if self.inode in inodes else len(chain)
            if index == 0:
                return None
            candidate, expected = chain[index - 1]
            fh = _open(candidate)
            if fh is not None:
                if os.fstat(fh.fileno()).st_ino == expected and _inode(self.path) == before:
                    return fh
                fh.close()
        return None


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None
