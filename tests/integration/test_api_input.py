"""Bad input gets a 4xx that says what to change; the queue bound answers 429 and loses nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import Settings
from agent.core.scheduling import Capacity
from agent.db.engine import Database
from agent.runtime.docker_runner import DockerRunner
from tests.conftest import Harness


@pytest.fixture
def api_only(
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    database_url: str,
) -> Harness:
    """The API without an agent: jobs stay queued."""
    return start_harness(make_settings(database_url=database_url, max_queued=3), with_agent=False)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"resources": {"memory": "lots"}}, "resources.memory", "'512m', '4g'"),
        ({"resources": {"memory": "1k"}}, "resources.memory", "at least 6m"),
        ({"resources": {"cpus": 0}}, "resources.cpus", "greater than 0"),
        ({"resources": {"gpus": -1}}, "resources.gpus", "greater than or equal to 0"),
        ({"command": "python train.py"}, "command", "valid list"),
        ({"command": []}, "command", "at least 1 item"),
        ({"image": "Not An Image"}, "image", "Docker image reference"),
        ({"env": {"TRAINYARD_JOB_ID": "x"}}, "env", "reserved"),
        ({"timeout_seconds": 0}, "timeout_seconds", "greater than or equal to 1"),
        ({"max_retries": -1}, "max_retries", "greater than or equal to 0"),
        ({"priorty": 5}, "priorty", "Extra inputs are not permitted"),
        ({"params": "epochs=3"}, "params", "valid dictionary"),
    ],
)
def test_bad_job_fields_get_422_naming_the_field(
    api_only: Harness, body: dict[str, Any], field: str, words: str
) -> None:
    response = api_only.client.post("/jobs", json=body)
    assert response.status_code == 422, response.text
    payload = response.json()
    # FastAPI's published shape ({"detail": [{"loc", "msg", "type"}]}) plus `field`/`message`.
    assert [e["field"] for e in payload["detail"]] == [field]
    [error] = payload["detail"]
    assert error["loc"] == ["body", *field.split(".")]
    assert isinstance(error["type"], str) and error["type"]
    assert words in error["msg"]
    assert payload["message"].startswith(f"{field}: ")
    assert words in payload["message"]
    assert api_only.client.get("/jobs").json()["total"] == 0


def test_bad_train_request_gets_422(api_only: Harness) -> None:
    response = api_only.client.post("/train", json={"epochs": 0})
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "epochs"
    assert response.json()["detail"][0]["loc"] == ["body", "epochs"]
    response = api_only.client.post("/train", json={"epochs": 2, "layers": [1, 2]})
    assert response.status_code == 422
    assert "POST /jobs with 'params'" in response.json()["message"]
    response = api_only.client.post(
        "/train", content=b'{"epochs": 2, "x": NaN}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "NaN" in response.json()["message"]


def test_malformed_json_gets_422(api_only: Harness) -> None:
    response = api_only.client.post(
        "/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "JSON" in response.json()["message"]


def test_queue_bound_answers_429_and_keeps_what_is_queued(api_only: Harness) -> None:
    ids = [api_only.submit({"params": {"epochs": 1}})["id"] for _ in range(3)]
    response = api_only.client.post("/jobs", json={"params": {"epochs": 1}})
    assert response.status_code == 429
    assert "bound is 3" in response.json()["detail"]
    assert response.headers["Retry-After"]
    assert api_only.client.post("/train", json={"epochs": 1}).status_code == 429
    queued = api_only.client.get("/jobs", params={"status": "queued"}).json()
    assert sorted(j["id"] for j in queued["items"]) == sorted(ids)

    # Cancelling one frees a place in the queue.
    cancelled = api_only.client.post(f"/jobs/{ids[0]}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert api_only.client.post("/jobs", json={}).status_code == 201


def test_cancelling_a_queued_job_is_immediate(api_only: Harness) -> None:
    job = api_only.submit({})
    response = api_only.client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled"
    assert body["finished_at"] is not None
    assert body["attempts"] == []
    kinds = [e["kind"] for e in api_only.client.get(f"/jobs/{job['id']}/events").json()]
    assert kinds == ["submitted", "cancelled"]


def test_a_job_bigger_than_the_agent_is_refused_at_submit(
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    sqlite_url: str,
) -> None:
    h = start_harness(make_settings(database_url=sqlite_url))
    response = h.client.post("/jobs", json={"resources": {"gpus": 1, "cpus": 64}})
    assert response.status_code == 422
    body = response.json()
    # The same shape as any 422: one item per problem, located at its field.
    assert body["detail"] == [
        {
            "loc": ["body", "resources", "cpus"],
            "msg": "resources.cpus 64 is more than any agent's (largest: 2)",
            "type": "value_error",
            "field": "resources.cpus",
        },
        {
            "loc": ["body", "resources", "gpus"],
            "msg": "resources.gpus 1 is more than any agent has (largest: 0)",
            "type": "value_error",
            "field": "resources.gpus",
        },
    ]
    assert "resources.cpus 64 is more than any agent's (largest: 2)" in body["message"]
    assert "resources.gpus 1 is more than any agent has (largest: 0)" in body["message"]
    response = h.client.post("/jobs", json={"resources": {"memory": "60t"}})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "resources", "memory"]
    assert error["type"] == "value_error"
    # Sizes as people read them, not "61847529062400" or "23635508k".
    assert error["msg"].startswith(
        "resources.memory 60 TiB is more than any agent offers (largest: "
    )
    assert error["msg"].endswith("iB)")
    assert h.client.get("/jobs").json()["total"] == 0


def test_openapi_page_is_served(api_only: Harness) -> None:
    assert api_only.client.get("/docs").status_code == 200
    schema = api_only.client.get("/openapi.json").json()
    assert {"/jobs", "/jobs/{job_id}", "/train", "/stats", "/health"} <= set(schema["paths"])


def test_health_is_503_when_the_database_is_down(api_only: Harness, tmp_path: Path) -> None:
    broken = Database(f"sqlite:///{tmp_path / 'gone' / 'db.sqlite'}")
    (tmp_path / "gone").rmdir()
    (tmp_path / "gone").write_text("a file where the database folder was")
    api_only.system.service.db = broken
    response = api_only.client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["database"]["ok"] is False
    assert "database unreachable" in body["checks"]["database"]["error"]


def test_an_api_only_process_never_builds_a_docker_client(
    api_only: Harness, start_harness: Callable[..., Harness], make_settings: Callable[..., Settings]
) -> None:
    """The API needs no engine: health is the database plus how many agents are live."""
    assert api_only.system.runtime is None and api_only.system.service.engine_ping is None
    body = api_only.client.get("/health").json()
    assert body["status"] == "ok"
    assert "docker" not in body["checks"]
    assert body["checks"]["agents"] == {"ok": True, "live": 0, "ids": []}
    # An agent joins (its own process elsewhere; here an embedded one on the same database):
    # the API-only process counts it, and /agents shows that agent's own engine.
    with_agent = start_harness(
        make_settings(database_url=api_only.system.settings.resolved_database_url)
    )
    body = api_only.client.get("/health").json()
    assert body["checks"]["agents"]["live"] == 1
    assert body["checks"]["agents"]["ids"] == [with_agent.agent_id]
    deadline = time.monotonic() + 10
    while (agent := api_only.client.get("/agents").json()[0])["engine"]["version"] is None:
        assert time.monotonic() < deadline, agent  # the first heartbeat carries the version
        time.sleep(0.05)
    assert agent["engine"]["reachable"] is True
    assert agent["engine"]["error"] is None
    assert agent["engine"]["version"][0].isdigit()  # e.g. 20.10.24+dfsg1


def test_health_is_503_when_the_docker_engine_is_down(api_only: Harness, tmp_path: Path) -> None:
    """The engine check of a process with an embedded agent (injected here)."""
    api_only.system.service.engine_ping = DockerRunner(f"unix://{tmp_path / 'no-docker.sock'}").ping
    response = api_only.client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["docker"]["ok"] is False
    assert "Docker engine unreachable" in body["checks"]["docker"]["error"]
    assert body["checks"]["database"]["ok"] is True


def test_requests_get_503_not_500_while_the_database_is_down(
    api_only: Harness, tmp_path: Path
) -> None:
    broken = Database(f"sqlite:///{tmp_path / 'gone' / 'db.sqlite'}")
    (tmp_path / "gone").rmdir()
    (tmp_path / "gone").write_text("a file where the database folder was")
    api_only.system.service.queue.db = broken
    for response in (
        api_only.client.get("/jobs"),
        api_only.client.post("/jobs", json={}),
        api_only.client.get("/stats"),
    ):
        assert response.status_code == 503, response.text
        assert response.json()["detail"].startswith("database unavailable: ")


def test_an_agent_that_joins_is_counted_at_once_by_the_next_submit(api_only: Harness) -> None:
    """Submits may reuse the live agents read in the last second to accept a job, but never
    to refuse one: a job refused a moment ago is accepted as soon as an agent that could run
    it has registered."""
    queue = api_only.system.queue
    queue.register_agent("test-small", "small", Capacity(2, 2 * 2**30, 2.0, ()))
    big = {"resources": {"memory": "8g", "cpus": 1}}
    small = {"resources": {"memory": "1g", "cpus": 1}}
    assert api_only.client.post("/jobs", json=small).status_code == 201
    refused = api_only.client.post("/jobs", json=big)
    assert refused.status_code == 422
    assert "more than any agent offers" in refused.json()["message"]
    queue.register_agent("test-big", "big", Capacity(2, 16 * 2**30, 8.0, ()))
    assert api_only.client.post("/jobs", json=big).status_code == 201
