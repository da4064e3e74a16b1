"""What the CLI prints: sizes, ages, durations, and API errors as one readable line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from cli import fmt, wait
from cli.client import check_token, check_url, error_message, one_line
from cli.errors import CliError
from cli.wait import exit_status

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (256 * 1024**2, "256 MiB"),
        (24159191040, "22.5 GiB"),
        (3 * 1024**4, "3 TiB"),
        (None, "-"),
        ("12", "-"),
        (True, "-"),
        (float("nan"), "-"),
    ],
)
def test_sizes_read_as_people_read_them(size: object, text: str) -> None:
    assert fmt.size(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.42, "0.4s"),
        (3, "3s"),
        (45.9, "45s"),
        (192, "3m 12s"),
        (7500, "2h 05m"),
        (3 * 86400 + 4 * 3600 + 59, "3d 4h"),
        (-5, "0s"),
        (None, "-"),
    ],
)
def test_durations(seconds: object, text: str) -> None:
    assert fmt.duration(seconds) == text


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=1), "just now"),
        (timedelta(seconds=42), "42s ago"),
        (timedelta(minutes=3, seconds=59), "3m ago"),
        (timedelta(hours=5), "5h ago"),
        (timedelta(days=9), "9d ago"),
        (timedelta(seconds=-30), "just now"),  # a server clock a little ahead
        (timedelta(seconds=-90), "in the future"),
    ],
)
def test_ages(delta: timedelta, text: str) -> None:
    assert fmt.age((NOW - delta).isoformat(), at=NOW) == text


def test_api_timestamps_with_and_without_zone_and_garbage() -> None:
    naive = (NOW - timedelta(minutes=2)).replace(tzinfo=None).isoformat()
    assert fmt.age(naive, at=NOW) == "2m ago"  # naive means UTC
    assert fmt.age("2026-01-02T03:00:05Z", at=NOW) == "4m ago"
    assert fmt.age("yesterday", at=NOW) == "-"
    assert fmt.age(None, at=NOW) == "-"
    assert fmt.between("2026-01-02T03:00:00Z", "2026-01-02T03:01:30Z") == 90
    assert fmt.percent(0.456) == "46%"
    assert fmt.percent(1.7) == "100%"
    assert fmt.number(0.123456) == "0.1235"
    assert fmt.number(7) == "7"


def response(status: int, body: object = None, text: str | None = None) -> httpx.Response:
    if text is not None:
        return httpx.Response(status, text=text)
    return httpx.Response(status, json=body)


def test_a_422_names_each_field_and_what_to_change_on_one_line() -> None:
    body = {
        "detail": [
            {
                "loc": ["body", "resources", "memory"],
                "msg": "memory 'lots' is not a size;\nuse 512m",
                "type": "value_error",
            },
            {"loc": ["body", "bogus"], "msg": "Extra inputs are not permitted", "type": "x"},
            {"loc": ["query", "limit"], "msg": "too big", "type": "x", "field": "limit"},
        ]
    }
    line = error_message(response(422, body))
    assert line == (
        "the API refused the request (422): resources.memory: memory 'lots' is not a size; "
        "use 512m; bogus: Extra inputs are not permitted; limit: too big"
    )


def test_other_errors_show_their_detail_or_status() -> None:
    assert error_message(response(404, {"detail": "job not found"})) == "job not found (404)"
    assert error_message(response(500, text="Internal Server Error")) == (
        "the API answered 500 Internal Server Error"
    )
    assert "set TRAINYARD_TOKEN" in error_message(response(401, {"detail": "a token is needed"}))
    hostile = error_message(response(400, {"detail": "\x1b[31mred\x1b[0m\n" + "x" * 5000}))
    assert "\x1b" not in hostile
    assert "\n" not in hostile
    assert len(hostile) == 1000


def test_urls_and_tokens_are_checked_before_any_request() -> None:
    assert check_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert check_url(" https://trainyard.example/api ") == "https://trainyard.example/api"
    for bad in ("127.0.0.1:8000", "ftp://x", "http://", "http://h/?q=1"):
        with pytest.raises(CliError, match="TRAINYARD_URL"):
            check_url(bad)
    assert check_token("") is None
    assert check_token(" abc.DEF_1 ") == "abc.DEF_1"
    for bad in ("two words", "line\nbreak", "naïve"):
        with pytest.raises(CliError, match="TRAINYARD_TOKEN"):
            check_token(bad)


def test_one_line_and_exit_status() -> None:
    assert one_line("a\tb\n\nc\x07") == "a b c?"
    assert exit_status({"status": "succeeded", "exit_code": 0}) == 0
    assert exit_status({"status": "failed", "exit_code": 4}) == 4
    assert exit_status({"status": "failed", "exit_code": None}) == 1
    assert exit_status({"status": "cancelled", "exit_code": 143}) == 143
    assert exit_status({"status": "failed", "exit_code": 300}) == 1


class FlakyApi:
    """Answers GET /jobs/{id} from a script: an exception to raise or a job to return."""

    def __init__(self, *replies: object) -> None:
        self.replies = list(replies)

    def get(self, path: str) -> object:
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def test_waiting_rides_out_a_brief_outage_but_not_a_real_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter(range(0, 10_000, 50))  # each poll 50 s after the last
    monkeypatch.setattr(wait.time, "monotonic", lambda: next(clock))
    down = CliError("cannot reach the Trainyard API", transient=True)
    running, done = {"id": "j", "status": "running"}, {"id": "j", "status": "succeeded"}
    poller = wait._Poller(FlakyApi(down, down, done), "j", poll=0)  # type: ignore[arg-type]
    assert poller.next(running) == running  # unreachable: keep the last state
    assert poller.next(running) == running
    assert poller.next(running) == done
    gone = CliError("job not found (404)")
    with pytest.raises(CliError, match="404"):
        wait._Poller(FlakyApi(gone), "j", poll=0).next(running)  # type: ignore[arg-type]
    too_long = wait._Poller(FlakyApi(down, down, down, down), "j", poll=0)  # type: ignore[arg-type]
    too_long.next(running)
    too_long.next(running)  # 50 s
    too_long.next(running)  # 100 s
    with pytest.raises(CliError, match="cannot reach"):
        too_long.next(running)  # 150 s > OUTAGE_SECONDS
