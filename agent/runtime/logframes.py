"""Docker's multiplexed log stream, parsed into complete lines in time linear in its size.

The engine sends one frame per log message: an 8-byte header (stream id, three zero bytes,
big-endian payload length), then ``<RFC3339Nano timestamp> <text>``. A message ends with a
newline; a longer line arrives as several *partial* messages without one (the json-file
driver cuts at 16 KiB), each with its own timestamp. This module joins the pieces, keeps the
first piece's timestamp, caps a line at ``max_line`` bytes (the rest is counted, never
buffered) and never re-copies bytes it has already seen, so a 1 GB line without a newline
costs the same per byte as short lines do.

Docker-free on purpose: it is pure bytes in, tuples out, and is unit-tested without an engine.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from agent.core.loglines import (
    MAX_LINE_BYTES,
    RFC3339,
    RawLine,
    normalize_match,
    truncated,
)

__all__ = ["Dechunker", "FrameParser"]

_STREAMS: Final = {1: "stdout", 2: "stderr", 3: "engine"}
_HEADER: Final = 8
_TS_LEN: Final = 30
_TEXT_AT: Final = _TS_LEN + 1
_SPACE: Final = 0x20
_ZULU: Final = 0x5A
_NEWLINE: Final = 0x0A


class _Frame:
    """A frame whose payload spans reads: keeps at most ``keep`` bytes, counts the rest."""

    __slots__ = ("dropped", "kept", "last", "left", "pieces", "stream_id")

    def __init__(self, stream_id: int, length: int) -> None:
        self.stream_id = stream_id
        self.left = length
        self.pieces: list[bytes] = []
        self.kept = 0
        self.dropped = 0
        self.last = b""  # the frame's last byte so far: did the message end its line?

    def take(self, data: bytes, start: int, keep: int) -> int:
        """Consume what this frame still needs from ``data[start:]``; return the new start."""
        end = min(len(data), start + self.left)
        room = keep - self.kept
        if room > 0:
            piece = data[start : min(end, start + room)]
            self.pieces.append(piece)
            self.kept += len(piece)
        self.dropped += max(0, (end - start) - max(room, 0))
        self.left -= end - start
        if end > start:
            self.last = data[end - 1 : end]
        return end


class _Partial:
    """A line the engine delivered as several messages (no newline yet)."""

    __slots__ = ("dropped", "pieces", "size", "timestamp")

    def __init__(self, timestamp: bytes) -> None:
        self.timestamp = timestamp
        self.pieces: list[bytes] = []
        self.size = 0
        self.dropped = 0

    def add(self, text: bytes, dropped: int, cap: int) -> None:
        room = cap - self.size
        if len(text) <= room:
            self.pieces.append(text)
            self.size += len(text)
        else:
            self.pieces.append(text[: max(room, 0)])
            self.size += max(room, 0)
            self.dropped += len(text) - max(room, 0)
        self.dropped += dropped


class FrameParser:
    """Feed it the raw (de-chunked) bytes of a log stream; it returns complete lines."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max_line
        self._keep = max_line + 64  # a frame keeps its timestamp and up to max_line of text
        self._head = b""  # fewer than 8 bytes of a header
        self._frame: _Frame | None = None
        self._partials: dict[int, _Partial] = {}
        self._last_ts = b""
        self.frames = 0
        self.truncated_lines = 0

    def feed(self, data: bytes) -> list[RawLine]:
        out: list[RawLine] = []
        pos = 0
        if self._frame is not None:
            pos = self._continue(data, out)
            if self._frame is not None:
                return out
        if self._head:
            data = self._head + data[pos:]
            pos = 0
            self._head = b""
        n = len(data)
        emit = self._emit
        while n - pos >= _HEADER:
            stream_id = data[pos]
            length = int.from_bytes(data[pos + 4 : pos + 8], "big")
            start = pos + _HEADER
            end = start + length
            if end > n:
                self._frame = _Frame(stream_id, length)
                self._frame.take(data, start, self._keep)
                return out
            pos = end
            if length > self._keep:
                newline = data[end - 1] == _NEWLINE
                emit(stream_id, data[start : start + self._keep], length - self._keep, out, newline)
            else:
                emit(stream_id, data[start:end], 0, out)
        self._head = data[pos:]
        return out

    def finish(self) -> list[RawLine]:
        """Lines still held at the end of the stream (a last line without its newline)."""
        out: list[RawLine] = []
        if self._frame is not None:
            frame, self._frame = self._frame, None
            payload = b"".join(frame.pieces)
            self._emit(frame.stream_id, payload, frame.dropped, out, frame.last == b"\n")
        for stream_id in list(self._partials):
            self._flush_partial(stream_id, out)
        return out

    def _continue(self, data: bytes, out: list[RawLine]) -> int:
        frame = self._frame
        assert frame is not None
        pos = frame.take(data, 0, self._keep)
        if frame.left == 0:
            self._frame = None
            payload = b"".join(frame.pieces)
            self._emit(frame.stream_id, payload, frame.dropped, out, frame.last == b"\n")
        return pos

    def _emit(
        self,
        stream_id: int,
        payload: bytes,
        dropped: int,
        out: list[RawLine],
        ends_line: bool = False,
    ) -> None:
        """One message: split off its timestamp, join it to a pending partial line if any.

        ``dropped`` bytes were cut from the payload's end; ``ends_line`` says whether the
        message (before the cut) ended with a newline."""
        self.frames += 1
        stream = _STREAMS.get(stream_id)
        if stream is None:
            return  # stdin (0) never carries output
        if len(payload) > _TS_LEN and payload[_TS_LEN] == _SPACE and payload[_TS_LEN - 1] == _ZULU:
            timestamp, text = payload[:_TS_LEN], payload[_TEXT_AT:]
        else:
            timestamp, text = self._slow_timestamp(payload)
        self._last_ts = timestamp
        if dropped:
            complete = ends_line
            dropped -= 1 if ends_line else 0  # the newline is not part of the text
        else:
            complete = text[-1:] == b"\n"
            if complete:
                text = text[:-1]
        partial = self._partials.get(stream_id)
        if partial is None and complete and len(text) <= self.max_line:
            out.append((stream, timestamp, text))
            return
        if partial is None:
            partial = self._partials[stream_id] = _Partial(timestamp)
        partial.add(text, dropped, self.max_line)
        if complete:
            self._flush_partial(stream_id, out)

    def _flush_partial(self, stream_id: int, out: list[RawLine]) -> None:
        partial = self._partials.pop(stream_id)
        text = b"".join(partial.pieces)
        if text[-1:] == b"\n":
            text = text[:-1]
        if partial.dropped:
            self.truncated_lines += 1
        out.append((_STREAMS[stream_id], partial.timestamp, truncated(text, partial.dropped)))

    def _slow_timestamp(self, payload: bytes) -> tuple[bytes, bytes]:
        """A timestamp in another RFC 3339 shape, or none: take the previous one."""
        match = RFC3339.match(payload)
        if match is not None:
            normalized = normalize_match(match)
            if normalized is not None:
                return normalized.encode(), payload[match.end() :]
        return self._last_ts or _now_timestamp(), payload


def _now_timestamp() -> bytes:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.").encode() + f"{now.microsecond * 1000:09d}Z".encode()


class Dechunker:
    """HTTP/1.1 chunked transfer decoding over a stream of reads, linear in its size.

    The engine flushes every log frame as its own HTTP chunk; decoding them here, many per
    read, costs a fraction of urllib3's per-chunk reads (measured in bench/logcapture.py)."""

    def __init__(self) -> None:
        self._buf = b""
        self._left = 0  # data bytes still due in the current chunk
        self._crlf = 0  # bytes of the CRLF after a chunk's data still due
        self.done = False

    def feed(self, data: bytes) -> bytes:
        if self._buf:
            data, self._buf = self._buf + data, b""
        out: list[bytes] = []
        pos = 0
        n = len(data)
        while pos < n and not self.done:
            if self._left:
                take = min(self._left, n - pos)
                out.append(data[pos : pos + take])
                self._left -= take
                pos += take
                if self._left == 0:
                    self._crlf = 2
                continue
            if self._crlf:
                skip = min(self._crlf, n - pos)
                self._crlf -= skip
                pos += skip
                continue
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                if n - pos > 1024:
                    raise ValueError("malformed chunked encoding: size line too long")
                self._buf = data[pos:]
                break
            size = int(data[pos:eol].split(b";", 1)[0], 16)
            if size == 0:
                self.done = True
                break
            pos = eol + 2
            if pos + size + 2 <= n:  # the usual case: the whole chunk is in this read
                out.append(data[pos : pos + size])
                pos += size + 2
            else:
                self._left = size
        return b"".join(out)
