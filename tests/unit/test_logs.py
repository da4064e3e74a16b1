from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.joblog import (
    MAX_LINE_BYTES,
    JobLogWriter,
    follow,
    follow_positioned,
    job_log_path,
    parse_line,
    parse_position,
    rotated_files,
    tail,
)

TS = "2026-11-22T10:00:00.123456789Z"
LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (agent |stdout|stderr) .*")


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def kept_lines(path: Path) -> list[str]:
    return [line for f in rotated_files(path) for line in read_lines(f)]


def number(line: str) -> int:
    parsed = parse_line(line)
    assert parsed is not None, line
    return int(parsed.text.rsplit(" ", 1)[1])


def container_ts(i: int) -> str:
    return f"2026-11-22T10:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:09d}Z"


def write_numbered(writer: JobLogWriter, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        writer.container("stdout", container_ts(i), f"line {i}\n")


# --- paths -------------------------------------------------------------------------------


def test_job_log_path(tmp_path: Path) -> None:
    assert job_log_path(tmp_path, "0af3") == tmp_path / "jobs" / "0af3.log"


@pytest.mark.parametrize("job_id", ["", "../etc", "ab/cd", "xyz", "ab cd", "ab.log", "a\n"])
def test_job_log_path_rejects_non_hex(tmp_path: Path, job_id: str) -> None:
    with pytest.raises(ValueError):
        job_log_path(tmp_path, job_id)


# --- format ------------------------------------------------------------------------------


def test_line_format(tmp_path: Path) -> None:
    path = tmp_path / "jobs" / "ab.log"
    with JobLogWriter(path) as writer:
        writer.agent("starting")
        writer.agent("pulled image", attempt=2)
        writer.container("stdout", TS, "epoch 1\n")
        writer.container("stderr", "2026-11-22T10:00:01.5+01:00", "warn\r\n")
        writer.container("stdout", TS, "100% %s %(x)d")
    lines = read_lines(path)
    assert all(LINE.fullmatch(line) for line in lines), lines
    assert lines[0][30:] == " agent  starting"
    assert lines[1].endswith(" agent  [attempt 2] pulled image")
    assert lines[2] == f"{TS} stdout epoch 1"
    assert lines[3] == "2026-11-22T09:00:01.500000000Z stderr warn"
    assert lines[4] == f"{TS} stdout 100% %s %(x)d"
    assert parse_line(lines[1]) == (lines[1][:30], "agent", "[attempt 2] pulled image")
    assert parse_line("not a log line") is None


def test_embedded_newlines_become_separate_records(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    with JobLogWriter(path) as writer:
        writer.container("stdout", TS, "one\r\ntwo\rX\nthree\n")
        writer.agent("a\nb", attempt=1)
        writer.container("stderr", TS, "")
    lines = read_lines(path)
    assert lines[:3] == [f"{TS} stdout one", f"{TS} stdout twoX", f"{TS} stdout three"]
    assert [line[30:] for line in lines[3:5]] == [
        " agent  [attempt 1] a",
        " agent  [attempt 1] b",
    ]
    assert lines[3][:30] == lines[4][:30]
    assert lines[5] == f"{TS} stderr "
    assert len(lines) == 6


def test_long_line_truncated_and_odd_characters(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    with JobLogWriter(path) as writer:
        writer.container("stdout", TS, "é" * MAX_LINE_BYTES)
        writer.container("stdout", TS, "bad \udcff surrogate")
    first, second = read_lines(path)
    text = first[38:]
    kept = text.split(" …[truncated ")[0]
    assert len(kept.encode()) <= MAX_LINE_BYTES
    assert text.endswith(f" …[truncated {2 * MAX_LINE_BYTES - len(kept.encode())} bytes]")
    assert second.endswith("bad \\udcff surrogate")


def test_invalid_arguments_and_closed_writer(tmp_path: Path) -> None:
    writer = JobLogWriter(tmp_path / "a.log")
    with pytest.raises(ValueError):
        writer.container("stdin", TS, "x")
    writer.close()
    writer.close()
    with pytest.raises(ValueError):
        writer.agent("late")


# --- rotation and tail -------------------------------------------------------------------


def test_rotation_keeps_whole_lines_and_tail_spans_files(tmp_path: Path) -> None:
    path = tmp_path / "jobs" / "ab.log"
    with JobLogWriter(path, max_bytes=2000, backup_count=3) as writer:
        write_numbered(writer, 500)
    files = rotated_files(path)
    assert files == [path.with_name(f"ab.log.{i}") for i in (3, 2, 1)] + [path]
    assert all(f.stat().st_size <= 2000 for f in files)
    numbers = [number(line) for line in kept_lines(path)]
    assert numbers == list(range(numbers[0], 500))
    assert numbers[0] > 0

    assert tail(path, 1) == [f"{container_ts(499)} stdout line 499"]
    assert [number(line) for line in tail(path, 75)] == list(range(425, 500))
    assert tail(path, 10_000) == kept_lines(path)
    assert tail(path, 0) == []
    assert tail(tmp_path / "missing.log", 5) == []


def test_tail_large_file_and_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    with path.open("w", encoding="utf-8") as fh:
        for i in range(120_000):
            fh.write(f"{container_ts(i)} stdout line {i}\n")
        fh.write("x" * 200_000 + "\n")
        fh.write(f"{TS} stdout last\n")
        fh.write("partial without newline")
    assert path.stat().st_size > 5_000_000
    result = tail(path, 5)
    assert result[-1] == f"{TS} stdout last"
    assert result[-2] == "x" * 200_000
    assert [number(line) for line in result[:3]] == [119_997, 119_998, 119_999]


# --- concurrency -------------------------------------------------------------------------


def test_concurrent_writers_with_rotation(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    per_thread = 2000
    with JobLogWriter(path, max_bytes=20_000, backup_count=100) as writer:

        def produce(worker: int) -> None:
            for i in range(per_thread):
                if worker == 0:
                    writer.agent(f"w{worker} n {i}", attempt=1)
                else:
                    stream = "stdout" if worker % 2 else "stderr"
                    writer.container(stream, container_ts(i), f"w{worker} n {i}")

        threads = [threading.Thread(target=produce, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert len(rotated_files(path)) > 10
    seen: dict[str, list[int]] = {}
    for line in kept_lines(path):
        assert LINE.fullmatch(line), line
        parsed = parse_line(line)
        assert parsed is not None
        worker, _, n = parsed.text.removeprefix("[attempt 1] ").split(" ")
        seen.setdefault(worker, []).append(int(n))
    assert seen == {f"w{w}": list(range(per_thread)) for w in range(4)}


# --- last_container_timestamp ------------------------------------------------------------


def test_last_container_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    with JobLogWriter(path) as writer:
        assert writer.last_container_timestamp is None
        writer.agent("hello")
        assert writer.last_container_timestamp is None
        writer.container("stdout", "2026-11-22T10:00:02.000000001Z", "b")
        writer.container("stderr", "2026-11-22T10:00:01Z", "a")
        writer.container("stderr", "garbage", "c")
        assert writer.last_container_timestamp == "2026-11-22T10:00:02.000000001Z"
        writer.agent("done")
    with JobLogWriter(path) as reopened:
        assert reopened.last_container_timestamp == "2026-11-22T10:00:02.000000001Z"
    with JobLogWriter(tmp_path / "new.log") as fresh:
        assert fresh.last_container_timestamp is None


def test_last_container_timestamp_falls_back_to_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    with JobLogWriter(path, max_bytes=2000, backup_count=2) as writer:
        write_numbered(writer, 100)
        for _ in range(40):
            writer.agent("agent only")
    assert all(" agent " in line for line in read_lines(path))
    with JobLogWriter(path, max_bytes=2000, backup_count=2) as reopened:
        assert reopened.last_container_timestamp == container_ts(99)


# --- follow ------------------------------------------------------------------------------


class Collector:
    def __init__(self, lines: Iterator[str]) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(lines), daemon=True)
        self.thread.start()

    def join(self, timeout: float = 5.0) -> list[str]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "follow did not end"
        return self.lines


def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_follow_across_rotations_yields_every_line_once(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    total = 3000
    done = threading.Event()
    writer = JobLogWriter(path, max_bytes=4000, backup_count=200)
    writer.agent("before follow")
    stream = follow(path, from_lines=1, poll_interval=0.01, stop=done.is_set)
    first = next(stream)  # follow starts (takes its snapshot) on first iteration
    collector = Collector(stream)
    for start in range(0, total, 50):
        write_numbered(writer, 50, start)
        time.sleep(0.002)
    writer.close()
    done.set()
    assert first.endswith(" agent  before follow")
    assert [number(line) for line in collector.join()] == list(range(total))
    assert len(rotated_files(path)) > 20


def test_follow_slow_poll_walks_several_rotations(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    done = threading.Event()
    with JobLogWriter(path, max_bytes=2000, backup_count=50) as writer:
        write_numbered(writer, 10)
        stream = follow(path, from_lines=3, poll_interval=0.3, stop=done.is_set)
        first = [next(stream) for _ in range(3)]
        collector = Collector(stream)
        time.sleep(0.05)
        write_numbered(writer, 400, start=10)
    done.set()
    assert [number(line) for line in first + collector.join()] == list(range(7, 410))


def test_follow_waits_for_file_and_holds_partial_line(tmp_path: Path) -> None:
    path = tmp_path / "jobs" / "ab.log"
    done = threading.Event()
    collector = Collector(follow(path, from_lines=10, poll_interval=0.01, stop=done.is_set))
    time.sleep(0.05)
    path.parent.mkdir()
    with path.open("a", encoding="utf-8") as fh:
        fh.write("first\nsec")
        fh.flush()
        wait_until(lambda: collector.lines == ["first"])
        time.sleep(0.05)
        assert collector.lines == ["first"]
        fh.write("ond\n")
    wait_until(lambda: len(collector.lines) == 2)
    done.set()
    assert collector.join() == ["first", "second"]


def test_follow_idle_timeout_ends(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    with JobLogWriter(path) as writer:
        write_numbered(writer, 3)
    started = time.monotonic()
    lines = list(follow(path, from_lines=2, poll_interval=0.01, idle_timeout=0.2))
    assert [number(line) for line in lines] == [1, 2]
    assert 0.2 <= time.monotonic() - started < 2.0
    assert list(follow(tmp_path / "never.log", poll_interval=0.01, idle_timeout=0.1)) == []


def test_follow_stop_drains_then_returns(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    with JobLogWriter(path, max_bytes=1000, backup_count=20) as writer:
        write_numbered(writer, 5)

        def stop() -> bool:
            write_numbered(writer, 60, start=5)  # lands (with rotations) just before stopping
            return True

        lines = follow(path, from_lines=1, poll_interval=0.01, stop=stop)
        assert [number(line) for line in lines] == list(range(4, 65))


# --- resuming after an agent restart (issue 3) -------------------------------------------------


def _container_lines(path: Path) -> list[str]:
    return [
        line.split(" ", 2)[2]
        for line in path.read_text().splitlines()
        if line.split(" ", 2)[1] in ("stdout", "stderr")
    ]


def test_resume_point_counts_lines_sharing_the_newest_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "jobs" / "ab.log"
    with JobLogWriter(path) as writer:
        writer.container("stdout", "2026-11-22T10:00:00.000000001Z", "a")
        writer.container("stdout", "2026-11-22T10:00:00.000000002Z", "b")
        writer.container("stderr", "2026-11-22T10:00:00.000000002Z", "c")
        writer.agent("not counted")
        assert writer.resume_point() == ("2026-11-22T10:00:00.000000002Z", 2)
    with JobLogWriter(path) as reopened:
        assert reopened.resume_point() == ("2026-11-22T10:00:00.000000002Z", 2)


def test_skip_through_drops_exactly_the_replayed_lines(tmp_path: Path) -> None:
    path = tmp_path / "jobs" / "ab.log"
    replay = [
        ("stdout", "2026-11-22T10:00:00.000000001Z", "one"),
        ("stdout", "2026-11-22T10:00:00.000000002Z", "two"),
        ("stderr", "2026-11-22T10:00:00.000000002Z", "three"),
        ("stdout", "2026-11-22T10:00:00.000000002Z", "four"),  # same instant, not written yet
        ("stdout", "2026-11-22T10:00:00.000000003Z", "five"),
    ]
    with JobLogWriter(path) as first:
        for line in replay[:3]:
            first.container(*line)
    with JobLogWriter(path) as second:
        second.skip_through(second.resume_point())
        for line in replay:  # the engine replays from the resume timestamp (inclusive) or earlier
            second.container(*line)
    assert _container_lines(path) == ["one", "two", "three", "four", "five"]


def test_a_torn_last_line_is_dropped_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "jobs" / "ab.log"
    with JobLogWriter(path) as writer:
        writer.container("stdout", "2026-11-22T10:00:00.000000001Z", "whole")
    with path.open("ab") as fh:
        fh.write(b"2026-11-22T10:00:00.000000002Z stdout tor")  # killed mid-write
    with JobLogWriter(path) as writer:
        assert writer.resume_point() == ("2026-11-22T10:00:00.000000001Z", 1)
        writer.skip_through(writer.resume_point())
        writer.container("stdout", "2026-11-22T10:00:00.000000002Z", "torn line, whole again")
    assert _container_lines(path) == ["whole", "torn line, whole again"]


# --- positions (SSE ids) -----------------------------------------------------------------


def _positioned_texts(items: list[tuple[str, str]]) -> list[int]:
    return [number(line) for pos, line in items if pos and pos != "gap"]


def test_resume_after_a_position_across_rotation_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "job.log"
    with JobLogWriter(path, max_bytes=2000, backup_count=100) as writer:
        write_numbered(writer, 100)
        first = list(follow_positioned(path, from_lines=1000, stop=lambda: True))
        assert _positioned_texts(first) == list(range(100))
        kept = first[:30]
        write_numbered(writer, 500, start=100)  # many rotations since the reader left
    after = parse_position(kept[-1][0])
    assert after is not None
    rest = list(follow_positioned(path, after=after, stop=lambda: True))
    assert _positioned_texts(kept) + _positioned_texts(rest) == list(range(600))
    # Every id is unique and a later id resumes just after its own line.
    ids = [pos for pos, _ in rest]
    assert len(set(ids)) == len(ids)
    middle = parse_position(rest[200][0])
    assert middle is not None
    again = list(follow_positioned(path, after=middle, stop=lambda: True))
    assert _positioned_texts(again) == list(range(30 + 201, 600))


def test_resume_from_a_file_rotated_out_reports_the_gap(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    with JobLogWriter(path, max_bytes=2000, backup_count=2) as writer:
        write_numbered(writer, 20)
        items = list(follow_positioned(path, from_lines=5, stop=lambda: True))
        position = items[0][0]
        write_numbered(writer, 500, start=20)
    after = parse_position(position)
    assert after is not None
    items = list(follow_positioned(path, after=after, stop=lambda: True))
    assert items[0] == ("gap", "")
    assert _positioned_texts(items)[-1] == 519


def test_parse_position_refuses_garbage() -> None:
    assert parse_position("12.2026-34") == ("12.2026", 34)
    for bad in ["", "x-1", "1", "1-", "-1", "1.2-3-4", "1.x-3", "12-34", "9" * 90 + ".1-1"]:
        assert parse_position(bad) is None, bad


def test_heartbeat_while_quiet(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    with JobLogWriter(path) as writer:
        writer.agent("hello")
    calls = iter([False, False, False, True])
    items = list(
        follow_positioned(
            path, from_lines=10, stop=lambda: next(calls), poll_interval=0.05, heartbeat=0.01
        )
    )
    assert items[0][1].endswith("hello")
    assert ("", "") in items
