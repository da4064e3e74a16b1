"""Docker's log framing and HTTP chunking, decoded in arbitrary read sizes."""

from __future__ import annotations

import random
import struct

import pytest

from agent.core.loglines import MAX_LINE_BYTES, normalize_timestamp
from agent.runtime.logframes import Dechunker, FrameParser

TS = b"2026-11-25T10:00:00.123456789Z"


def frame(stream_id: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream_id, len(payload)) + payload


def message(text: bytes, ts: bytes = TS, stream_id: int = 1) -> bytes:
    return frame(stream_id, ts + b" " + text)


def chunked(data: bytes, sizes: list[int]) -> bytes:
    out, pos = [], 0
    for size in sizes:
        piece = data[pos : pos + size]
        if not piece:
            break
        out.append(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        pos += size
    if pos < len(data):
        rest = data[pos:]
        out.append(f"{len(rest):x}\r\n".encode() + rest + b"\r\n")
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def feed_in_pieces(parser: FrameParser, data: bytes, cuts: list[int]) -> list[tuple]:
    lines = []
    pos = 0
    for cut in [*cuts, len(data)]:
        lines += parser.feed(data[pos:cut])
        pos = cut
    return lines + parser.finish()


def test_whole_lines_both_streams() -> None:
    data = message(b"one\n") + message(b"two\n", stream_id=2) + message(b"\n")
    assert FrameParser().feed(data) == [
        ("stdout", TS, b"one"),
        ("stderr", TS, b"two"),
        ("stdout", TS, b""),
    ]


@pytest.mark.parametrize("seed", range(20))
def test_any_read_boundaries_give_the_same_lines(seed: int) -> None:
    rng = random.Random(seed)
    texts = [bytes(rng.choice(b"abc xyz") for _ in range(rng.randint(0, 300))) for _ in range(200)]
    data = b"".join(message(t + b"\n", stream_id=1 + i % 2) for i, t in enumerate(texts))
    cuts = sorted(rng.sample(range(1, len(data)), 60))
    lines = feed_in_pieces(FrameParser(), data, cuts)
    assert [text for _, _, text in lines] == texts
    assert [stream for stream, _, _ in lines] == ["stdout", "stderr"] * 100


def test_partial_messages_join_under_the_first_timestamp() -> None:
    later = b"2026-11-25T10:00:01.000000000Z"
    data = message(b"a" * 10) + message(b"b" * 10, ts=later) + message(b"c\n", ts=later)
    assert FrameParser().feed(data) == [("stdout", TS, b"a" * 10 + b"b" * 10 + b"c")]


def test_partials_of_two_streams_do_not_mix() -> None:
    data = (
        message(b"out-", stream_id=1)
        + message(b"err-", stream_id=2)
        + message(b"end\n", stream_id=1)
        + message(b"end\n", stream_id=2)
    )
    assert [(s, t) for s, _, t in FrameParser().feed(data)] == [
        ("stdout", b"out-end"),
        ("stderr", b"err-end"),
    ]


def test_a_line_without_newline_at_the_end_is_kept() -> None:
    parser = FrameParser()
    assert parser.feed(message(b"last words")) == []
    assert parser.finish() == [("stdout", TS, b"last words")]


def test_huge_line_is_capped_and_says_how_much_was_dropped() -> None:
    parser = FrameParser(max_line=1000)
    pieces = [message(b"x" * 16384) for _ in range(10)] + [message(b"tail\n")]
    lines = parser.feed(b"".join(pieces))
    assert len(lines) == 1
    text = lines[0][2]
    assert text.startswith(b"x" * 1000)
    dropped = 16384 * 10 + 4 - 1000
    assert text.endswith(f" …[truncated {dropped} bytes]".encode())
    assert parser.truncated_lines == 1


def test_one_giant_frame_across_many_reads_is_linear_and_capped() -> None:
    """A 64 MiB frame fed in 64 KiB reads: never buffered whole, capped at max_line."""
    parser = FrameParser()
    size = 64 * 1024 * 1024
    header = struct.pack(">BxxxL", 1, len(TS) + 1 + size + 1)
    block = b"y" * 65536
    assert parser.feed(header + TS + b" ") == []
    for _ in range(size // len(block)):
        assert parser.feed(block) == []
    line, after = parser.feed(b"\n" + message(b"next\n"))
    assert line[2].startswith(b"y" * 1000)
    assert len(line[2]) < MAX_LINE_BYTES + 100
    kept = MAX_LINE_BYTES
    assert line[2] == b"y" * kept + f" …[truncated {size - kept} bytes]".encode()
    assert after == ("stdout", TS, b"next")


def test_giant_frame_in_one_read_ends_its_line() -> None:
    data = message(b"z" * 200_000 + b"\n") + message(b"next\n")
    line, after = FrameParser(max_line=100).feed(data)
    assert line[2].endswith(b" bytes]") and after[2] == b"next"


def test_odd_timestamps_are_normalized_or_inherited() -> None:
    odd = b"2026-11-25T11:00:00.5+01:00"
    data = message(b"a\n", ts=odd) + frame(1, b"no timestamp here\n")
    lines = FrameParser().feed(data)
    assert lines[0] == ("stdout", b"2026-11-25T10:00:00.500000000Z", b"a")
    assert lines[1] == ("stdout", b"2026-11-25T10:00:00.500000000Z", b"no timestamp here")


def test_stdin_frames_ignored_and_engine_frames_kept() -> None:
    data = frame(0, TS + b" in\n") + frame(3, TS + b" engine says\n")
    assert FrameParser().feed(data) == [("engine", TS, b"engine says")]


def test_normalize_timestamp() -> None:
    assert normalize_timestamp("2026-11-25T10:00:00Z") == "2026-11-25T10:00:00.000000000Z"
    assert normalize_timestamp("garbage") is None
    assert normalize_timestamp("2026-13-45T10:00:00Z") is None


@pytest.mark.parametrize("seed", range(10))
def test_dechunker_any_boundaries(seed: int) -> None:
    rng = random.Random(seed)
    body = bytes(rng.randrange(256) for _ in range(5000))
    sizes = [rng.randint(1, 300) for _ in range(40)]
    wire = chunked(body, sizes)
    cuts = sorted(rng.sample(range(1, len(wire)), 30))
    dechunker, out, pos = Dechunker(), [], 0
    for cut in [*cuts, len(wire)]:
        out.append(dechunker.feed(wire[pos:cut]))
        pos = cut
    assert b"".join(out) == body
    assert dechunker.done


def test_dechunker_refuses_garbage() -> None:
    with pytest.raises(ValueError):
        Dechunker().feed(b"z" * 2000)
    with pytest.raises(ValueError):
        Dechunker().feed(b"nothex\r\n")
