"""LogPump: a stream that breaks, stalls or keeps failing never loses or doubles a line
silently (scripted log sources; the real engine is in tests/integration/test_log_capture.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from agent.core.errors import RuntimeUnavailable
from agent.core.loglines import RawLine
from agent.joblog import JobLogWriter, parse_line
from agent.worker.logpump import DrainReport, LogPump, docker_since


def ts(i: int) -> bytes:
    return f"2026-11-25T10:00:{i // 1000:02d}.{i % 1000:09d}Z".encode()


ALL = [("stdout", ts(i // 2), f"line {i}".encode()) for i in range(200)]  # two lines per stamp


class Script:
    """The engine: each open() returns the next scripted behaviour of a stream."""

    def __init__(self, behaviours: list[str], fail_at: int = 100) -> None:
        self.behaviours = behaviours
        self.fail_at = fail_at
        self.opens: list[str | None] = []

    def open(self, container_id: str, since: str | None) -> Source:
        self.opens.append(since)
        behaviour = self.behaviours[min(len(self.opens), len(self.behaviours)) - 1]
        if behaviour == "refuse":
            raise RuntimeUnavailable("engine unreachable")
        start = 0
        if since is not None:  # the engine replays everything at or after `since`
            start = next(i for i, line in enumerate(ALL) if docker_since(line[1].decode()) >= since)
        return Source(ALL[start:], behaviour, self.fail_at - start)


class Source:
    def __init__(self, lines: list[RawLine], behaviour: str, fail_at: int) -> None:
        self.lines = lines
        self.behaviour = behaviour
        self.fail_at = fail_at
        self.bytes_read = 0
        self.closed = False
        self._closed_event = threading.Event()

    def __iter__(self) -> Iterator[list[RawLine]]:
        for i in range(0, len(self.lines), 10):
            if self.behaviour in ("break", "stall", "short") and i >= self.fail_at:
                if self.behaviour == "short":
                    return  # ends cleanly, as if everything had been sent
                if self.behaviour == "break":
                    raise RuntimeUnavailable("read logs: the stream broke (reset)")
                self._closed_event.wait(30)  # a stalled engine: nothing until closed
                return
            if self.closed:
                return
            self.bytes_read += 100
            yield self.lines[i : i + 10]

    def close(self) -> None:
        self.closed = True
        self._closed_event.set()


def run_pump(
    tmp_path: Path, script: Script, *, stall: float = 0.3, check_tail: bool = True
) -> tuple[DrainReport, list]:
    path = tmp_path / "job.log"
    writer = JobLogWriter(path)
    pump = LogPump(
        script.open,
        "c" * 64,
        writer,
        since=None,
        attempt=1,
        stall_seconds=stall,
        retry_pause=0.01,
        read_engine_tail=(lambda container_id: ALL[-1]) if check_tail else None,
    )
    pump.start()
    pump.container_exited()
    report = pump.finish()
    writer.close()
    parsed = [parse_line(line) for line in path.read_text().splitlines()]
    return report, [p for p in parsed if p is not None]


def container_texts(parsed: list) -> list[str]:
    return [p.text for p in parsed if p.source == "stdout"]


def test_clean_stream_is_complete(tmp_path: Path) -> None:
    report, parsed = run_pump(tmp_path, Script(["ok"]))
    assert report == DrainReport(True, 200)
    assert container_texts(parsed) == [f"line {i}" for i in range(200)]


def test_broken_stream_is_reopened_from_the_resume_point_without_doubles(tmp_path: Path) -> None:
    script = Script(["break", "ok"])
    report, parsed = run_pump(tmp_path, script)
    assert report.complete
    assert container_texts(parsed) == [f"line {i}" for i in range(200)]
    assert script.opens[0] is None and script.opens[1] is not None


def test_stalled_stream_is_closed_and_reopened(tmp_path: Path) -> None:
    script = Script(["stall", "ok"])
    report, parsed = run_pump(tmp_path, script, stall=0.3)
    assert report.complete
    assert container_texts(parsed) == [f"line {i}" for i in range(200)]


def test_a_stream_that_keeps_failing_is_reported_never_silent(tmp_path: Path) -> None:
    script = Script(["break", "refuse"])
    report, parsed = run_pump(tmp_path, script)
    assert not report.complete
    assert container_texts(parsed) == [f"line {i}" for i in range(100)]
    assert "log incomplete" in report.detail
    assert "100 lines captured" in report.detail
    last = parsed[-1]
    assert last.source == "agent" and "log incomplete" in last.text
    assert "engine unreachable" in last.text


def test_progress_resets_the_failure_count(tmp_path: Path) -> None:
    """Each reopen makes progress, so more breaks than MAX_STREAM_FAILURES still complete."""
    script = Script(["break"] * 6 + ["ok"])

    def open_(container_id: str, since: str | None) -> Source:
        source = Script.open(script, container_id, since)
        source.fail_at = 30  # every stream breaks 30 lines in
        return source

    script.open = open_  # type: ignore[method-assign]
    report, parsed = run_pump(tmp_path, script)
    assert len(script.opens) == 7
    assert report.complete
    assert container_texts(parsed) == [f"line {i}" for i in range(200)]


def test_a_stream_that_ends_early_on_its_own_is_caught_by_the_engines_last_line(
    tmp_path: Path,
) -> None:
    """Docker 20.10 sometimes ends a follow stream before sending everything; the engine's
    last line is not in the log, so the pump reopens from the resume point."""
    script = Script(["short", "ok"])
    report, parsed = run_pump(tmp_path, script)
    assert report.complete
    assert container_texts(parsed) == [f"line {i}" for i in range(200)]
    assert len(script.opens) == 2


def test_without_the_last_line_check_an_early_end_would_pass_silently(tmp_path: Path) -> None:
    """The check above is what catches it: without it the same stream looks complete."""
    report, parsed = run_pump(tmp_path, Script(["short", "ok"]), check_tail=False)
    assert report.complete
    assert len(container_texts(parsed)) == 100
