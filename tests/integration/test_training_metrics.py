"""Training metrics end to end: the real agent runs the real training image, whose JSON epoch
lines become progress, an ETA and curves, on SQLite and on PostgreSQL. A failed attempt that
is retried continues the same curve."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import FINAL, Harness

pytestmark = pytest.mark.docker


def metrics(harness: Harness, job_id: str, **params: Any) -> dict[str, Any]:
    response = harness.client.get(f"/jobs/{job_id}/metrics", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def progress_gauge(harness: Harness, job_id: str) -> bool:
    text = harness.client.get("/metrics").text
    return f'trainyard_job_progress{{job_id="{job_id}"}}' in text


def test_progress_rises_while_it_runs_and_the_curve_is_stored(harness: Harness) -> None:
    job_id = harness.submit({"params": {"epochs": 4, "epoch_seconds": 0.5}})["id"]
    running: list[tuple[float, float | None]] = []
    gauge_seen = False
    deadline = time.monotonic() + 90
    while True:
        job = harness.job(job_id)
        if job["status"] in FINAL:
            break
        if job["status"] == "running" and job["progress"] is not None:
            running.append((job["progress"], job["eta_seconds"]))
            gauge_seen = gauge_seen or progress_gauge(harness, job_id)
        assert time.monotonic() < deadline, f"the job did not finish: {job}"
        time.sleep(0.05)

    assert job["status"] == "succeeded", job
    assert running, "progress never showed while the job ran"
    fractions = [p for p, _ in running]
    assert fractions == sorted(fractions)  # it only rises
    assert 0 < fractions[0] < 1
    assert any(eta is not None and eta >= 0 for _, eta in running)
    assert gauge_seen
    assert job["progress"] == 1.0 and job["eta_seconds"] is None
    latest = job["latest_metrics"]
    assert (latest["epoch"], latest["epochs"], latest["attempt"]) == (4, 4, 1)
    assert not progress_gauge(harness, job_id)  # the label goes with the attempt

    body = metrics(harness, job_id)
    loss = body["series"]["loss"]
    assert [p["epoch"] for p in loss] == [1, 2, 3, 4]
    assert [p["attempt"] for p in loss] == [1, 1, 1, 1]
    assert loss[-1]["value"] == latest["loss"] < loss[0]["value"]  # it really trained
    assert [p["t"] for p in loss] == sorted(p["t"] for p in loss)
    assert {"epoch", "epochs", "loss", "accuracy", "seconds"} <= set(body["series"])
    assert "learning_rate" in body["series"]  # every numeric field, constants too

    keyed = metrics(harness, job_id, keys="loss,accuracy")
    assert set(keyed["series"]) == {"loss", "accuracy"}
    first = metrics(harness, job_id, keys="loss", limit=2)
    assert [p["epoch"] for p in first["series"]["loss"]] == [1, 2] and first["more"]
    rest = metrics(harness, job_id, keys="loss", since=first["cursor"])
    assert [p["epoch"] for p in rest["series"]["loss"]] == [3, 4] and not rest["more"]
    assert metrics(harness, job_id, since=body["cursor"])["series"] == {}

    listed = harness.client.get("/jobs").json()["items"]
    assert [j["progress"] for j in listed if j["id"] == job_id] == [1.0]
    log = harness.logs(job_id)
    assert log.count('"epoch": 3') == 1  # the log is untouched
    harness.wait_no_containers()


def test_a_retried_job_continues_the_same_curve(harness: Harness) -> None:
    job_id = harness.submit(
        {
            "params": {"epochs": 4, "fail_at_epoch": 3, "fail_attempts": 1},
            "max_retries": 1,
        }
    )["id"]
    job = harness.wait_final(job_id, timeout=90)

    assert job["status"] == "succeeded", job
    assert [a["outcome"] for a in job["attempts"]] == ["user_error", "succeeded"]
    loss = metrics(harness, job_id)["series"]["loss"]
    # Attempt 1 did epochs 1-2 and failed at the start of 3; attempt 2 resumed from its
    # checkpoint: one curve, each point with its attempt.
    assert [(p["epoch"], p["attempt"]) for p in loss] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    assert loss[-1]["value"] < loss[0]["value"]
    assert job["progress"] == 1.0 and job["eta_seconds"] is None
    assert job["latest_metrics"]["attempt"] == 2
    harness.wait_no_containers()
