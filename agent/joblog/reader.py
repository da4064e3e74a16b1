"""Reading a job log: tail, and follow (like ``tail -F``) with positions that survive rotation."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from agent.joblog.files import (
    BLOCK,
    backup_paths,
    inode_of,
    line_boundary,
    open_or_none,
    reverse_lines,
    rotated_files,
)
from agent.joblog.format import TIMESTAMP_LEN

_TAIL_ATTEMPTS = 5


Positioned = tuple[str, int, bytes]
"""(the file's identity, offset just past the line's newline, the line without it)."""


def _file_identity(fh: BinaryIO) -> str:
    """Inode plus the digits of the file's first timestamp: inodes are reused once rotation
    deletes old files, a file's first line never changes."""
    head = os.pread(fh.fileno(), TIMESTAMP_LEN, 0)
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
    for backup in backup_paths(path):
        if len(newest_first) >= n:
            break
        fh = open_or_none(backup)
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
    position = line_boundary(fh, end)
    out: list[Positioned] = []
    for line in _take(reverse_lines(fh, position), n):
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
    head = open_or_none(path)
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


class LogFollower:
    """A follow that never blocks: `poll()` returns what was written since the last call.

    For servers, which must not park a thread per reader: the caller sleeps between polls
    (asynchronously), so a reader that went away costs nothing once its stream is closed."""

    def __init__(
        self, path: Path, *, from_lines: int = 0, after: tuple[str, int] | None = None
    ) -> None:
        self._follower = _Follower(Path(path))
        self._first: list[tuple[str, str]] = []
        if after is not None:
            if not self._follower.resume(*after):
                self._first.append(("gap", ""))
        else:
            self._first = [
                (format_position(identity, offset), line.decode("utf-8", "replace"))
                for identity, offset, line in self._follower.start(from_lines)
            ]

    def poll(self) -> list[tuple[str, str]]:
        first, self._first = self._first, []
        return first + list(self._follower.drain())

    def close(self) -> None:
        self._follower.close()


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
        self.fh = open_or_none(self.path)
        if self.fh is None:
            return _tail_positioned(self.path, from_lines, None, 0) if from_lines > 0 else []
        stat = os.fstat(self.fh.fileno())
        self.inode = stat.st_ino
        boundary = line_boundary(self.fh, stat.st_size)
        lines = _tail_positioned(self.path, from_lines, self.fh, boundary) if from_lines > 0 else []
        self.fh.seek(boundary)
        return lines

    def resume(self, identity: str, offset: int) -> bool:
        """Continue just past a known position; False when that file is no longer kept (then
        start at the oldest file that is)."""
        for candidate in [self.path, *backup_paths(self.path)]:
            fh = open_or_none(candidate)
            if fh is None:
                continue
            if _file_identity(fh) == identity:
                self._switch(fh)
                fh.seek(min(offset, os.fstat(fh.fileno()).st_size))
                return True
            fh.close()
        files = rotated_files(self.path)
        self._switch(open_or_none(files[0]) if files else None)
        return False

    def drain(self) -> Iterator[tuple[str, str]]:
        """Read everything written so far, following rotations, then return."""
        self.got_bytes = False
        if self.fh is None:
            self._switch(open_or_none(self.path))
        while self.fh is not None:
            yield from self._read_to_end()
            current = inode_of(self.path)
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
        while data := self.fh.read(BLOCK):
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
            before = inode_of(self.path)
            if before is None:
                return None
            chain = [(p, inode_of(p)) for p in [self.path, *backup_paths(self.path)]]
            chain = [(p, ino) for p, ino in chain if ino is not None]
            inodes = [ino for _, ino in chain]
            index = inodes.index(self.inode) if self.inode in inodes else len(chain)
            if index == 0:
                return None
            candidate, expected = chain[index - 1]
            fh = open_or_none(candidate)
            if fh is not None:
                if os.fstat(fh.fileno()).st_ino == expected and inode_of(self.path) == before:
                    return fh
                fh.close()
        return None
