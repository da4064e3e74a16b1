"""A job's log is complete: every line a container prints arrives once, in order, whatever
the rate and whatever the line length (real engine, real agent, SQLite)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import Settings
from agent.joblog import job_log_path, parse_line, rotated_files
from tests.conftest import Harness

pytestmark = pytest.mark.docker

LINES = 2_000_000


def _container_lines(settings: Settings, job_id: str) -> list[tuple[str, str]]:
    path = job_log_path(settings.log_dir, job_id)
    lines = []
    for file in rotated_files(path):
        for raw in file.read_text(encoding="utf-8").splitlines():
            parsed = parse_line(raw)
            assert parsed is not None, raw
            if parsed.source != "agent":
                lines.append((parsed.source, parsed.text))
    return lines


def _agent_lines(settings: Settings, job_id: str) -> str:
    path = job_log_path(settings.log_dir, job_id)
    return "\n".join(
        line
        for file in rotated_files(path)
        for line in file.read_text(encoding="utf-8").splitlines()
        if " agent  " in line[29:38]
    )


def test_two_million_fast_lines_arrive_exactly_once_in_order(
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    sqlite_url: str,
) -> None:
    settings = make_settings(
        database_url=sqlite_url, log_max_bytes=16 * 1024 * 1024, log_backup_count=50
    )
    harness = start_harness(settings)
    script = f"seq 1 {LINES}; echo last-on-stderr >&2"
    job = harness.submit({"command": ["sh", "-c", script], "resources": {"cpus": 1}})
    final = harness.wait_final(job["id"], timeout=240)
    assert final["status"] == "succeeded", final
    harness.wait_no_containers()

    lines = _container_lines(settings, job["id"])
    stdout = [text for source, text in lines if source == "stdout"]
    assert len(stdout) == LINES
    # Exactly once and in order: the numbers are 1..N with no gap and no repeat.
    assert stdout == [str(i) for i in range(1, LINES + 1)]
    assert ("stderr", "last-on-stderr") in lines
    assert "log incomplete" not in _agent_lines(settings, job["id"])
    assert "log incomplete" not in (final["reason"] or "")


def test_short_fast_jobs_keep_every_line(
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    sqlite_url: str,
) -> None:
    """The engine (20.10) sometimes ends a follow stream of a container that has just exited
    before sending everything (about one run in six at this size, without the agent's check)."""
    settings = make_settings(database_url=sqlite_url)
    harness = start_harness(settings)
    lines = 20_000
    pad = "x" * 80  # 100-byte lines, as fast as the engine takes them
    script = f"sleep 0.5; seq -f '%09.0f {pad}' 1 {lines}"
    body = {"command": ["sh", "-c", script], "resources": {"cpus": 2}}
    jobs = [harness.submit(body) for _ in range(12)]
    for job in jobs:
        final = harness.wait_final(job["id"], timeout=120)
        assert final["status"] == "succeeded", final
        stdout = [t for s, t in _container_lines(settings, job["id"]) if s == "stdout"]
        assert stdout == [f"{i:09d} {pad}" for i in range(1, lines + 1)], job["id"]
    harness.wait_no_containers()


def test_a_huge_line_without_newline_is_capped_and_the_next_line_survives(
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    settings = make_settings(database_url=sqlite_url)
    harness = start_harness(settings)
    script = "head -c 16000000 /dev/zero | tr '\\0' x; echo; echo after-the-big-one"
    job = harness.submit({"command": ["sh", "-c", script]})
    final = harness.wait_final(job["id"], timeout=120)
    assert final["status"] == "succeeded", final

    lines = _container_lines(settings, job["id"])
    assert [source for source, _ in lines] == ["stdout", "stdout"]
    big, after = (text for _, text in lines)
    assert big.startswith("x" * 1000)
    assert big.endswith(f" …[truncated {16_000_000 - 64 * 1024} bytes]")
    assert after == "after-the-big-one"
    harness.wait_no_containers()


def _sse_events(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    event: dict[str, str] = {}
    for line in lines:
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            event[key] = value


def test_sse_follow_resumes_with_last_event_id_across_rotation(
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    sqlite_url: str,
) -> None:
    """A reader drops mid-stream and reconnects with Last-Event-ID: every line once, in order,
    although the log rotated many times in between."""
    settings = make_settings(database_url=sqlite_url, log_max_bytes=4096, log_backup_count=1000)
    harness = start_harness(settings)
    script = "for i in $(seq 1 3000); do echo n $i; [ $((i % 500)) -eq 0 ] && sleep 0.3; done"
    job = harness.submit({"command": ["sh", "-c", script]})
    url = f"/jobs/{job['id']}/logs"
    headers = {"Accept": "text/event-stream"}
    seen: list[str] = []
    last_id = ""
    with harness.client.stream(
        "GET", url, params={"follow": "true", "tail": 10000}, headers=headers
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in _sse_events(response.iter_lines()):
            if "id" in event:
                seen.append(event["data"])
                last_id = event["id"]
            if sum(1 for s in seen if " stdout n " in s) >= 700:
                break  # the reader goes away mid-stream
    harness.wait_final(job["id"], timeout=120)
    end = None
    with harness.client.stream(
        "GET", url, params={"follow": "true"}, headers={**headers, "Last-Event-ID": last_id}
    ) as response:
        for event in _sse_events(response.iter_lines()):
            if event.get("event") == "end":
                end = event["data"]
                break
            if "id" in event:
                seen.append(event["data"])
    assert end == "succeeded"
    numbers = [int(s.rsplit(" ", 1)[1]) for s in seen if " stdout n " in s]
    assert numbers == list(range(1, 3001))
    rotated = rotated_files(job_log_path(settings.log_dir, job["id"]))
    assert len(rotated) > 20  # it really rotated while the reader was away

    bad = harness.client.get(
        url, params={"follow": "true"}, headers={**headers, "Last-Event-ID": "nonsense"}
    )
    assert bad.status_code == 400
    assert "Last-Event-ID" in bad.json()["detail"]


def test_stdout_and_stderr_are_merged_in_the_engines_timestamp_order(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    """A script that alternates print() and a stderr write, on an image that does not set
    PYTHONUNBUFFERED (the agent does, so print() is not held back until exit): each stream's
    lines keep their order, and the two are merged by the engine's timestamps.

    The engine stamps a line when it reads it from the stream's pipe, one goroutine per stream:
    under load it may read one pipe late, and lines written a moment apart then carry stamps in
    the other order. No reader can recover that order; the log is the engine's."""
    h = start_harness(make_settings(database_url=sqlite_url))
    code = (
        "import sys, time\n"
        "for i in range(200):\n"
        "    print(f'out {i}')\n"
        "    time.sleep(0.001)\n"
        "    sys.stderr.write(f'err {i}\\n')\n"
        "    time.sleep(0.001)\n"
    )
    job = h.submit({"image": "trainyard/base:bookworm", "command": ["python3", "-c", code]})
    assert h.wait_final(job["id"])["status"] == "succeeded"
    entries = [parse_line(line) for line in h.logs(job["id"], tail=10_000).splitlines()]
    lines = [e for e in entries if e is not None and e.source != "agent"]
    assert [e.text for e in lines if e.source == "stdout"] == [f"out {i}" for i in range(200)]
    assert [e.text for e in lines if e.source == "stderr"] == [f"err {i}" for i in range(200)]
    stamps = [e.timestamp for e in lines]
    assert stamps == sorted(stamps)
    # Without PYTHONUNBUFFERED every stdout line would come at exit, after all of stderr.
    first_err = next(i for i, e in enumerate(lines) if e.source == "stderr")
    assert first_err < 10
