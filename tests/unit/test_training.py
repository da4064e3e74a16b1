"""The pure side of training metrics (agent/core/training.py): which lines are metrics, what
progress they mean, how fast it moves, and how long series are thinned."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from agent.core.jobs import JobStatus
from agent.core.records import Job
from agent.core.training import (
    MAX_KEYS,
    MAX_METRIC_LINE_BYTES,
    MetricPoint,
    MetricReader,
    ProgressState,
    SeriesPage,
    TrainingSummary,
    advance,
    dropped_by_thinning,
    eta_seconds,
    is_candidate,
    kept_after_thinning,
    numeric_fields,
    progress_of,
    thin_per_key,
    wall_time,
)
from api.schemas import JobOut, MetricsOut
from tests.unit.jobs_for_tests import new_job


def ts(seconds: float) -> bytes:
    """An engine timestamp `seconds` after 2026-01-01T00:00:00Z, nanosecond format."""
    whole = int(seconds)
    nanos = round((seconds - whole) * 1e9)
    base = datetime.fromtimestamp(1767225600 + whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}Z".encode()


T0 = 1767225600.0


# --- recognising lines ---------------------------------------------------------------------


def test_a_json_object_line_gives_its_finite_numbers() -> None:
    line = b'{"epoch": 2, "epochs": 5, "step": 900, "loss": 0.41, "accuracy": 0.88}'
    assert numeric_fields(line) == {
        "epoch": 2,
        "epochs": 5,
        "step": 900,
        "loss": 0.41,
        "accuracy": 0.88,
    }


def test_only_finite_ints_and_floats_count() -> None:
    line = json.dumps(
        {
            "loss": 0.5,
            "ok": True,
            "done": False,
            "name": "resnet",
            "lr": None,
            "nested": {"a": 1},
            "list": [1, 2],
            "big": 10**400,
            "huge": 2**70,
        }
    ).encode()
    line = line[:-1] + b', "nan": NaN, "inf": Infinity, "ninf": -Infinity}'
    assert numeric_fields(line) == {"loss": 0.5, "huge": 2**70}


@pytest.mark.parametrize(
    "line",
    [
        b"epoch 1 loss 0.5",
        b"",
        b' {"loss": 1}',  # not starting with "{": not even parsed
        b"[1, 2]",
        b"{broken json",
        b'{"loss": 0.5',
        b'{"loss": 0.5} trailing',
        b"{" + b"[" * 100_000,  # deep nesting is not a crash
        b'{"loss": "\xff\xfe"}',  # not UTF-8
    ],
)
def test_other_lines_are_just_log_lines(line: bytes) -> None:
    assert numeric_fields(line) is None


def test_the_one_byte_check() -> None:
    assert is_candidate(b'{"a": 1}')
    assert not is_candidate(b"")
    assert not is_candidate(b"a{")


def test_a_line_longer_than_64_kib_is_ignored() -> None:
    padding = "x" * MAX_METRIC_LINE_BYTES
    assert numeric_fields(json.dumps({"loss": 1.0, "pad": padding}).encode()) is None
    fits = json.dumps({"loss": 1.0, "pad": "x" * 1000}).encode()
    assert numeric_fields(fits) == {"loss": 1.0}


def test_keys_are_1_to_64_printable_characters() -> None:
    fields = {"": 1, "k" * 64: 2, "k" * 65: 3, "a\x00b": 4, "tab\there": 5, "\ud800": 6, "é": 7}
    assert numeric_fields(json.dumps(fields).encode()) == {"k" * 64: 2, "é": 7}


def test_an_empty_object_has_no_fields() -> None:
    assert numeric_fields(b"{}") == {}
    assert numeric_fields(b'{"a": "b"}') == {}


def test_wall_time_reads_the_engine_timestamp_to_the_microsecond() -> None:
    assert wall_time(b"2026-01-02T03:04:05.123456789Z") == datetime(
        2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC
    )
    assert wall_time(b"not a time") is None


# --- progress --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"epoch": 2, "epochs": 4}, 0.5),
        ({"epoch": 1, "total_epochs": 4}, 0.25),
        ({"epoch": 3, "num_epochs": 4}, 0.75),
        ({"step": 900, "total_steps": 1000}, 0.9),
        ({"step": 50, "max_steps": 200}, 0.25),
        ({"step": 10, "num_steps": 100}, 0.1),
        ({"step": 10, "total_steps": 100, "epoch": 3, "epochs": 4}, 0.1),  # steps are finer
        ({"step": 10, "epoch": 1, "epochs": 4}, 0.25),  # no step total: epochs
        ({"epoch": 5, "epochs": 4}, 1.0),  # clamped
        ({"epoch": -1, "epochs": 4}, 0.0),
        ({"epoch": 2, "epochs": 0}, None),
        ({"epoch": 2}, None),
        ({"epochs": 4}, None),
        ({"loss": 0.3}, None),
    ],
)
def test_progress_of(values: dict[str, float], expected: float | None) -> None:
    assert progress_of(values) == expected


def test_eta_over_the_current_attempt() -> None:
    state = advance(None, attempt=1, attempt_started=T0, progress=0.25, at=T0 + 10)
    # One sample: the rate runs from the attempt's start (progress 0 then).
    assert eta_seconds(state, now=T0 + 10) == pytest.approx(30)
    state = advance(state, attempt=1, attempt_started=T0, progress=0.5, at=T0 + 15)
    # Two samples: from the first one, so start-up time does not count: 0.25 per 5 s.
    assert eta_seconds(state, now=T0 + 15) == pytest.approx(10)
    # It counts down between samples, and stays at 0 when overdue.
    assert eta_seconds(state, now=T0 + 19) == pytest.approx(6)
    assert eta_seconds(state, now=T0 + 100) == 0.0


def test_eta_unknown_without_a_rate() -> None:
    assert eta_seconds(None, now=T0) is None
    state = advance(None, attempt=1, attempt_started=None, progress=0.25, at=T0)
    assert eta_seconds(state, now=T0) is None  # one sample, no start time
    stalled = advance(state, attempt=1, attempt_started=None, progress=0.25, at=T0 + 5)
    assert eta_seconds(stalled, now=T0 + 5) is None


def test_eta_is_zero_when_done() -> None:
    state = advance(None, attempt=1, attempt_started=T0, progress=1.0, at=T0 + 5)
    assert eta_seconds(state, now=T0 + 5) == 0.0


def test_a_resumed_attempt_measures_its_rate_from_where_the_last_one_stopped() -> None:
    first = advance(None, attempt=1, attempt_started=T0, progress=0.25, at=T0 + 10)
    first = advance(first, attempt=1, attempt_started=T0, progress=0.5, at=T0 + 20)
    # Attempt 2 starts at T0+100 from the checkpoint at 0.5; its first epoch ends at +110.
    second = advance(first, attempt=2, attempt_started=T0 + 100, progress=0.75, at=T0 + 110)
    assert (second.attempt, second.base_progress, second.base_at) == (2, 0.5, T0 + 100)
    assert eta_seconds(second, now=T0 + 110) == pytest.approx(10)
    # A resumed attempt behind the last progress (an older checkpoint) waits for 2 samples.
    behind = advance(first, attempt=2, attempt_started=T0 + 100, progress=0.25, at=T0 + 110)
    assert eta_seconds(behind, now=T0 + 110) is None
    behind = advance(behind, attempt=2, attempt_started=T0 + 100, progress=0.5, at=T0 + 120)
    assert eta_seconds(behind, now=T0 + 120) == pytest.approx(20)


def test_progress_state_round_trips_and_refuses_junk() -> None:
    state = advance(None, attempt=3, attempt_started=T0, progress=0.5, at=T0 + 1)
    assert ProgressState.from_json(json.loads(json.dumps(state.to_json()))) == state
    assert ProgressState.from_json(None) is None
    assert ProgressState.from_json({"attempt": "1"}) is None
    assert ProgressState.from_json({**state.to_json(), "progress": None}) is None
    assert ProgressState.from_json({**state.to_json(), "at": "soon"}) is None
    assert ProgressState.from_json([1, 2]) is None


# --- thinning --------------------------------------------------------------------------------


def test_nothing_is_thinned_within_the_bound() -> None:
    assert kept_after_thinning(5, 5) == [0, 1, 2, 3, 4]
    assert dropped_by_thinning(5, 5) == []


def test_thinning_drops_every_other_point_of_the_older_half() -> None:
    assert kept_after_thinning(11, 10) == [0, 2, 4, 6, 7, 8, 9, 10]
    assert dropped_by_thinning(11, 10) == [1, 3, 5]


@pytest.mark.parametrize(("count", "bound"), [(3, 2), (1001, 1000), (5000, 1000), (10**5, 10)])
def test_thinning_keeps_the_bound_the_first_and_the_last(count: int, bound: int) -> None:
    kept = kept_after_thinning(count, bound)
    assert len(kept) <= bound
    assert kept[0] == 0 and kept[-1] == count - 1
    assert kept == sorted(set(kept))
    assert kept == kept_after_thinning(count, bound)  # deterministic
    assert sorted(set(kept) | set(dropped_by_thinning(count, bound))) == list(range(count))


def test_repeated_thinning_keeps_recent_points_dense() -> None:
    """Appending one point at a time and thinning each time the bound is passed: the newest
    quarter stays complete, the old part gets sparser."""
    bound, series = 100, []
    for value in range(1000):
        series.append(value)
        series = [series[i] for i in kept_after_thinning(len(series), bound)]
    assert len(series) <= bound
    assert series[0] == 0 and series[-1] == 999
    assert series[-25:] == list(range(975, 1000))


def test_a_bound_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        kept_after_thinning(5, 1)


# --- one attempt's reader --------------------------------------------------------------------


def test_the_reader_makes_points_with_step_epoch_time_and_attempt() -> None:
    reader = MetricReader(2, attempt_started=T0)
    points = reader.read(ts(5), b'{"epoch": 1, "epochs": 4, "step": 10, "loss": 0.5}')
    assert {p.key: p.value for p in points} == {"epoch": 1, "epochs": 4, "step": 10, "loss": 0.5}
    point = points[-1]
    assert (point.step, point.epoch, point.attempt) == (10.0, 1.0, 2)
    assert point.at == datetime.fromtimestamp(T0 + 5, UTC)
    assert reader.latest == {"epoch": 1, "epochs": 4, "step": 10, "loss": 0.5}
    assert reader.progress is not None and reader.progress.progress == 0.25
    assert reader.read(ts(6), b"plain text") == []
    assert reader.read(ts(6), b"{not json") == []


def test_a_total_printed_once_serves_later_lines() -> None:
    reader = MetricReader(1, attempt_started=T0)
    reader.read(ts(1), b'{"total_steps": 1000}')
    assert reader.progress is None
    reader.read(ts(2), b'{"step": 250, "loss": 1.0}')
    assert reader.progress is not None and reader.progress.progress == 0.25
    reader.read(ts(3), b'{"loss": 0.9}')  # no counter: not a progress sample
    assert reader.progress.at == T0 + 2


def test_the_reader_continues_a_job_summary() -> None:
    first = MetricReader(1, attempt_started=T0)
    first.read(ts(10), b'{"epoch": 2, "epochs": 4, "loss": 0.5}')
    second = MetricReader(2, attempt_started=T0 + 100, summary=first.summary())
    second.read(ts(110), b'{"epoch": 3, "epochs": 4, "loss": 0.4}')
    assert second.progress is not None
    assert (second.progress.attempt, second.progress.progress) == (2, 0.75)
    assert eta_seconds(second.progress, now=T0 + 110) == pytest.approx(10)


def test_at_most_64_keys_per_job() -> None:
    reader = MetricReader(1, attempt_started=None)
    reader.read(ts(1), json.dumps({f"k{i}": i for i in range(MAX_KEYS - 1)}).encode())
    points = reader.read(ts(2), b'{"k0": 1.5, "new1": 1, "new2": 2, "new3": 3}')
    assert {p.key for p in points} == {"k0", "new1"}
    assert len(reader.latest) == MAX_KEYS
    assert reader.refused == 2 and reader.refused_keys == ["new2", "new3"]
    # Known keys still come through.
    assert [p.key for p in reader.read(ts(3), b'{"k5": 0.1, "other": 1}')] == ["k5"]


def test_summary_eta_and_fraction() -> None:
    assert TrainingSummary({}).fraction is None
    assert TrainingSummary({}).eta_seconds(T0) is None
    state = advance(None, attempt=1, attempt_started=T0, progress=0.5, at=T0 + 10)
    summary = TrainingSummary({"loss": 1}, state)
    assert summary.fraction == 0.5
    assert summary.eta_seconds(T0 + 10) == pytest.approx(10)


# --- what the API derives (api/schemas.py) ---------------------------------------------------


def job_record(status: JobStatus, attempt_count: int) -> Job:
    now = datetime.now(UTC)
    values = vars(new_job())
    return Job(
        **values,
        id="a" * 32,
        status=status,
        reason=None,
        outcome=None,
        exit_code=None,
        attempt_count=attempt_count,
        retries_used=0,
        infra_retries_used=0,
        not_before=None,
        created_at=now,
        updated_at=now,
        started_at=now,
        finished_at=None,
        agent_id=None,
        cancel_requested_at=None,
        cancel_requested_by=None,
    )


def test_job_out_derives_progress_eta_and_latest_metrics() -> None:
    now = time.time()
    state = advance(None, attempt=2, attempt_started=now - 10, progress=0.5, at=now)
    summary = TrainingSummary({"epoch": 2, "loss": 0.25}, state)

    running = JobOut.of(job_record(JobStatus.RUNNING, 2), training=summary)
    assert running.progress == 0.5 and running.latest_metrics == {"epoch": 2, "loss": 0.25}
    assert running.eta_seconds == pytest.approx(10, abs=0.5)
    # The job's current attempt has not reported yet: the old rate says nothing about it.
    assert JobOut.of(job_record(JobStatus.RUNNING, 3), training=summary).eta_seconds is None
    done = JobOut.of(job_record(JobStatus.SUCCEEDED, 2), training=summary)
    assert done.eta_seconds is None and done.progress == 0.5
    bare = JobOut.of(job_record(JobStatus.RUNNING, 2))
    assert (bare.progress, bare.eta_seconds, bare.latest_metrics) == (None, None, None)
    assert (
        JobOut.of(job_record(JobStatus.RUNNING, 2), training=TrainingSummary({})).model_dump()[
            "latest_metrics"
        ]
        is None
    )


def test_metrics_out_shows_whole_counters_as_printed() -> None:
    at = datetime.fromtimestamp(T0, UTC)
    page = SeriesPage(
        {
            "loss": [
                MetricPoint("loss", 0.5, at, 1, 900.0, 2.0),
                MetricPoint("loss", 0.4, at, 2, None, 2.5),
            ]
        },
        cursor=7,
        more=False,
    )
    body = MetricsOut.of(page).model_dump(mode="json")
    assert body["cursor"] == 7 and body["more"] is False
    first, second = body["series"]["loss"]
    assert (first["step"], first["epoch"], first["attempt"], first["value"]) == (900, 2, 1, 0.5)
    assert isinstance(first["step"], int) and isinstance(first["epoch"], int)
    assert (second["step"], second["epoch"]) == (None, 2.5)
    assert datetime.fromisoformat(first["t"]) == at


def test_a_batch_is_thinned_per_key_keeping_order_first_and_newest() -> None:
    at = datetime.fromtimestamp(T0, UTC)
    batch = [MetricPoint(key, float(i), at, 1) for i in range(30) for key in ("a", "b")]
    batch += [MetricPoint("rare", 1.0, at, 1)]
    thinned = thin_per_key(batch, 10)
    for key in ("a", "b"):
        values = [p.value for p in thinned if p.key == key]
        assert len(values) <= 10 and values[0] == 0.0 and values[-1] == 29.0
        assert values == sorted(values)
    assert [p for p in thinned if p.key == "rare"] == batch[-1:]
    assert [batch.index(p) for p in thinned] == sorted(batch.index(p) for p in thinned)
    assert thin_per_key(batch, 100) is batch
