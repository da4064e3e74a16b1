"""Training metrics storage and its API, on SQLite and on PostgreSQL (no Docker needed):
series per job with a cursor, summaries for a page of jobs in one query, thinning past the
bound, the lease fence; GET /jobs/{id} progress/ETA/latest values and GET /jobs/{id}/metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, update

from agent.config import Settings
from agent.core.records import Claim
from agent.core.scheduling import Capacity
from agent.core.training import MetricPoint, MetricReader, TrainingSummary
from agent.db.metrics import MetricStore
from agent.db.models import JobRow
from agent.wiring import System
from api.app import create_app
from tests.unit.jobs_for_tests import new_job

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Stack:
    system: System
    store: MetricStore
    client: TestClient

    def claim(self, **job: object) -> Claim:
        queue = self.system.queue
        queue.submit(new_job(**job), max_queued=100)
        capacity = Capacity(slots=8, memory_bytes=64 * 2**30, cpus=64.0, gpu_ids=())
        claim = queue.claim("test-metrics", capacity, lease_seconds=60)
        assert claim is not None
        return claim


@pytest.fixture
def stack(make_settings: Callable[..., Settings], database_url: str) -> Iterator[Stack]:
    settings = make_settings(database_url=database_url)
    system = System.build(settings, with_agent=False)
    system.start()
    client = TestClient(create_app(settings, system_=system))
    yield Stack(system, MetricStore(system.db), client)
    client.close()
    system.close(timeout=5)


def points(attempt: int, *values: tuple[str, float, float | None]) -> list[MetricPoint]:
    return [
        MetricPoint(key, value, T0 + timedelta(seconds=i), attempt, None, epoch)
        for i, (key, value, epoch) in enumerate(values)
    ]


def test_series_by_key_with_a_cursor(stack: Stack) -> None:
    claim = stack.claim()
    job_id, token = claim.job.id, claim.lease_token
    first = points(1, ("loss", 0.9, 1), ("acc", 0.5, 1), ("loss", 0.7, 2), ("acc", 0.6, 2))
    assert stack.store.append(job_id, token, first, TrainingSummary({}), max_points=100)

    page = stack.store.series(job_id)
    assert [p.value for p in page.series["loss"]] == [0.9, 0.7]
    assert [p.epoch for p in page.series["acc"]] == [1.0, 2.0]
    assert page.series["loss"][0].at == T0 and not page.more
    cursor = page.cursor
    assert stack.store.series(job_id, since=cursor).series == {}
    assert stack.store.series(job_id, since=cursor).cursor == cursor  # nothing new: kept

    more = points(1, ("loss", 0.5, 3), ("é", 1e300, None))
    assert stack.store.append(job_id, token, more, TrainingSummary({}), max_points=100)
    newer = stack.store.series(job_id, since=cursor)
    assert {k: [p.value for p in v] for k, v in newer.series.items()} == {
        "loss": [0.5],
        "é": [1e300],
    }
    assert newer.cursor > cursor
    only = stack.store.series(job_id, keys=["loss", "missing"])
    assert list(only.series) == ["loss"] and len(only.series["loss"]) == 3

    limited = stack.store.series(job_id, limit=2)
    assert limited.more and sum(len(v) for v in limited.series.values()) == 2
    rest = stack.store.series(job_id, since=limited.cursor)
    assert not rest.more and sum(len(v) for v in rest.series.values()) == 4


def test_summaries_for_many_jobs_in_one_query(stack: Stack) -> None:
    claims = [stack.claim() for _ in range(3)]
    for i, claim in enumerate(claims[:2]):
        reader = MetricReader(1, attempt_started=T0.timestamp())
        stamp = f"2026-01-01T00:00:{10 + i:02d}.000000000Z".encode()
        found = reader.read(stamp, json.dumps({"epoch": i + 1, "epochs": 4}).encode())
        stack.store.append(claim.job.id, claim.lease_token, found, reader.summary(), max_points=100)
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(stack.system.db.engine, "before_cursor_execute", count)
    try:
        summaries = stack.store.summaries(c.job.id for c in claims)
    finally:
        event.remove(stack.system.db.engine, "before_cursor_execute", count)
    assert len([s for s in statements if "job_training" in s]) == 1
    assert set(summaries) == {claims[0].job.id, claims[1].job.id}
    assert summaries[claims[0].job.id].fraction == 0.25
    assert summaries[claims[1].job.id].latest == {"epoch": 2, "epochs": 4}
    progress = summaries[claims[1].job.id].progress
    assert progress is not None and (progress.attempt, progress.progress) == (1, 0.5)


def test_a_series_past_the_bound_is_thinned_and_keeps_its_last_point(stack: Stack) -> None:
    claim = stack.claim()
    for batch in range(10):
        batch_points = points(1, *[("loss", float(batch * 7 + i), None) for i in range(7)])
        stack.store.append(
            claim.job.id, claim.lease_token, batch_points, TrainingSummary({}), max_points=20
        )
    loss = stack.store.series(claim.job.id).series["loss"]
    assert len(loss) <= 20
    assert loss[0].value == 0.0 and loss[-1].value == 69.0
    assert [p.value for p in loss] == sorted(p.value for p in loss)


def test_writes_are_fenced_by_the_lease(stack: Stack) -> None:
    claim = stack.claim()
    with stack.system.db.transaction() as s:
        s.execute(update(JobRow).where(JobRow.id == claim.job.id).values(lease_token="other"))
    stored = stack.store.append(
        claim.job.id,
        claim.lease_token,
        points(1, ("loss", 1.0, None)),
        TrainingSummary({"loss": 1.0}),
        max_points=100,
    )
    assert not stored
    assert stack.store.series(claim.job.id).series == {}
    assert stack.store.summary(claim.job.id) is None


# --- the API -----------------------------------------------------------------------------------


def store_epochs(stack: Stack, claim: Claim, epochs: range, *, started: float) -> None:
    reader = MetricReader(
        claim.attempt, attempt_started=started, summary=stack.store.summary(claim.job.id)
    )
    found: list[MetricPoint] = []
    for epoch in epochs:
        at = datetime.fromtimestamp(started + epoch, UTC)
        stamp = at.strftime("%Y-%m-%dT%H:%M:%S.%f").encode() + b"000Z"
        line = {"epoch": epoch, "epochs": 10, "loss": 1.0 / epoch, "accuracy": 0.1 * epoch}
        found += reader.read(stamp, json.dumps(line).encode())
    assert stack.store.append(
        claim.job.id, claim.lease_token, found, reader.summary(), max_points=1000
    )


def test_job_shows_progress_eta_and_latest_metrics(stack: Stack) -> None:
    claim = stack.claim()
    assert stack.system.queue.mark_running(claim)
    job_id = claim.job.id
    before = stack.client.get(f"/jobs/{job_id}").json()
    assert (before["progress"], before["eta_seconds"], before["latest_metrics"]) == (None,) * 3

    started = time.time() - 3.5  # epochs 1..3 took one second each; epoch 3 ended 0.5 s ago
    store_epochs(stack, claim, range(1, 4), started=started)
    job = stack.client.get(f"/jobs/{job_id}").json()
    assert job["progress"] == pytest.approx(0.3)
    assert job["latest_metrics"] == {"epoch": 3, "epochs": 10, "loss": 1 / 3, "accuracy": 0.1 * 3}
    assert job["eta_seconds"] == pytest.approx(6.5, abs=0.5)  # 7 epochs at 1/s, 0.5 s gone

    listed = stack.client.get("/jobs").json()["items"]
    assert [(j["id"], j["progress"]) for j in listed] == [(job_id, pytest.approx(0.3))]

    stack.client.post(f"/jobs/{job_id}/cancel")  # a finished job has no ETA
    with stack.system.db.transaction() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id).values(status="cancelled"))
    done = stack.client.get(f"/jobs/{job_id}").json()
    assert done["eta_seconds"] is None and done["progress"] == pytest.approx(0.3)


def test_metrics_route_series_keys_and_since(stack: Stack) -> None:
    claim = stack.claim()
    store_epochs(stack, claim, range(1, 5), started=T0.timestamp())
    response = stack.client.get(f"/jobs/{claim.job.id}/metrics")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body["series"]) == {"epoch", "epochs", "loss", "accuracy"}
    loss = body["series"]["loss"]
    assert [p["epoch"] for p in loss] == [1, 2, 3, 4]  # whole counters shown as printed
    assert [p["attempt"] for p in loss] == [1, 1, 1, 1]
    assert loss[0]["step"] is None and loss[0]["value"] == 1.0
    assert datetime.fromisoformat(loss[0]["t"]) == T0 + timedelta(seconds=1)
    assert body["more"] is False

    keyed = stack.client.get(f"/jobs/{claim.job.id}/metrics", params={"keys": "loss, accuracy"})
    assert set(keyed.json()["series"]) == {"loss", "accuracy"}
    cursor = body["cursor"]
    assert stack.client.get(f"/jobs/{claim.job.id}/metrics", params={"since": cursor}).json() == {
        "series": {},
        "cursor": cursor,
        "more": False,
    }
    store_epochs(stack, claim, range(5, 6), started=T0.timestamp())
    newer = stack.client.get(
        f"/jobs/{claim.job.id}/metrics", params={"since": cursor, "keys": "loss"}
    ).json()
    assert [p["epoch"] for p in newer["series"]["loss"]] == [5]
    assert newer["cursor"] > cursor


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"since": -1}, 422, "greater than or equal to 0"),
        ({"since": "abc"}, 422, "valid integer"),
        ({"since": 2**64}, 422, "less than or equal to"),
        ({"limit": 0}, 422, "greater than or equal to 1"),
        ({"keys": ","}, 400, "at least one key"),
        ({"keys": ",".join(f"k{i}" for i in range(65))}, 400, "at most 64 keys"),
        ({"keys": "x" * 65}, 400, "at most 64 characters"),
    ],
)
def test_metrics_route_refuses_bad_queries(
    stack: Stack, params: dict[str, object], status: int, words: str
) -> None:
    claim = stack.claim()
    response = stack.client.get(f"/jobs/{claim.job.id}/metrics", params=params)
    assert response.status_code == status, response.text
    assert words in response.text


def test_metrics_of_an_unknown_job_is_404(stack: Stack) -> None:
    response = stack.client.get(f"/jobs/{'0' * 32}/metrics")
    assert response.status_code == 404
