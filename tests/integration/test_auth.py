"""Who may do what: API tokens, owners and admins, single-user mode, env redaction, per-user
quotas, idempotent submission, the Host allowlist and CORS, and the public-bind refusal.

Every test that touches the database runs on SQLite and PostgreSQL (`database_url`)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
import tarfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from agent.config import Settings
from agent.core.auth import TOKEN_PATTERN, UnsafeBind, User
from agent.core.jobs import JobSpec
from agent.core.records import AgentInfo
from agent.db.models import JobRow
from agent.db.tokens import TokenStore
from api.app import create_app
from tests.conftest import Harness

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-value-that-never-comes-back"
IDENTITIES = ("none", "wrong", "revoked", "other", "owner", "admin")
WRONG_TOKEN = "ty_" + "A" * 43  # well formed, never issued


def _workdir() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("train.py")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"1\n"))
    return buffer.getvalue()


WORKDIR = _workdir()


def wipe_tokens(url: str) -> None:
    """The session's PostgreSQL database is shared by every test: leave it without tokens,
    so the others run in single-user mode. (SQLite databases are per test.)"""
    if url.startswith("postgresql"):
        with psycopg.connect(url.replace("+psycopg", "")) as conn:
            conn.execute("TRUNCATE tokens")


@pytest.fixture
def db_url(database_url: str) -> Iterator[str]:
    wipe_tokens(database_url)
    yield database_url
    wipe_tokens(database_url)


@pytest.fixture
def api(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], db_url: str
) -> Harness:
    """The API with no agent: jobs stay queued."""
    return start_harness(make_settings(database_url=db_url), with_agent=False)


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


@dataclass
class World:
    """alice owns a job; bob is another user; root an admin; alice also has a revoked token."""

    h: Harness
    tokens: dict[str, str | None] = field(default_factory=dict)
    job: str = ""

    def headers(self, identity: str) -> dict[str, str]:
        return bearer(self.tokens[identity])

    def new_job(self, **body: Any) -> str:
        response = self.h.client.post("/jobs", json=body, headers=self.headers("owner"))
        assert response.status_code == 201, response.text
        job_id: str = response.json()["id"]
        return job_id


@pytest.fixture
def world(api: Harness) -> World:
    store = api.system.service.tokens
    revoked, old = store.create("alice")
    store.revoke(revoked.id)
    world = World(
        api,
        {
            "none": None,
            "wrong": WRONG_TOKEN,
            "revoked": old,
            "other": store.create("bob")[1],
            "owner": store.create("alice")[1],
            "admin": store.create("root", admin=True)[1],
        },
    )
    world.job = world.new_job(env={"WANDB_API_KEY": SECRET})
    outputs = api.system.settings.outputs_dir / world.job
    outputs.mkdir(parents=True)
    (outputs / "result.txt").write_text("accuracy 0.9\n")
    return world


# --- the matrix -----------------------------------------------------------------------------

OPEN = dict.fromkeys(IDENTITIES, 200)
SIGNED_IN = {"none": 401, "wrong": 401, "revoked": 401, "other": 200, "owner": 200, "admin": 200}
CREATED = {**SIGNED_IN, "other": 201, "owner": 201, "admin": 201}
OWNED = {**SIGNED_IN, "other": 404}


@dataclass(frozen=True)
class Row:
    method: str
    route: str  # the route's path as FastAPI has it
    expected: dict[str, int]
    url: str = ""  # the URL asked ({job}: alice's job); default: the route
    body: dict[str, Any] | None = None
    fresh_job: bool = False  # a new job of alice's for each identity (cancel changes it)
    finished: bool = False  # that new job cancelled first (only finished jobs are deleted)
    content: bytes | None = None  # a raw body instead of JSON


MATRIX = [
    Row("GET", "/health", OPEN),
    Row("GET", "/metrics", OPEN),
    Row("GET", "/docs", OPEN),
    Row("GET", "/openapi.json", OPEN),
    Row("POST", "/jobs", CREATED, body={"params": {"epochs": 1}}),
    Row("POST", "/train", CREATED, body={"epochs": 1}),
    Row("GET", "/jobs", SIGNED_IN),
    Row("GET", "/stats", SIGNED_IN),
    Row("GET", "/agents", SIGNED_IN),
    Row("GET", "/jobs/{job_id}", OWNED, "/jobs/{job}"),
    Row("GET", "/train/{task_id}", OWNED, "/train/{job}"),
    Row("POST", "/jobs/{job_id}/cancel", OWNED, "/jobs/{job}/cancel", fresh_job=True),
    Row("GET", "/jobs/{job_id}/events", OWNED, "/jobs/{job}/events"),
    Row("GET", "/jobs/{job_id}/logs", OWNED, "/jobs/{job}/logs?tail=10"),
    Row("GET", "/jobs/{job_id}/outputs", OWNED, "/jobs/{job}/outputs"),
    Row(
        "GET",
        "/jobs/{job_id}/outputs/{path:path}",
        OWNED,
        "/jobs/{job}/outputs/result.txt",
    ),
    Row("GET", "/jobs/{job_id}/metrics", OWNED, "/jobs/{job}/metrics"),
    Row(
        "DELETE",
        "/jobs/{job_id}",
        {**OWNED, "owner": 204, "admin": 204},
        "/jobs/{job}",
        fresh_job=True,
        finished=True,
    ),
    Row("POST", "/jobs/{job_id}/rerun", {**OWNED, "owner": 201, "admin": 201}, "/jobs/{job}/rerun"),
    Row(
        "HEAD",
        "/workdirs/{digest}",
        {**SIGNED_IN, "other": 404, "owner": 404, "admin": 404},  # not uploaded: 404 to all
        f"/workdirs/{'0' * 64}",
    ),
    Row(
        "PUT",
        "/workdirs/{digest}",
        {**SIGNED_IN, "other": 201, "owner": 200, "admin": 200},  # stored once, by the first
        f"/workdirs/{hashlib.sha256(WORKDIR).hexdigest()}",
        content=WORKDIR,
    ),
]


@pytest.mark.parametrize("row", MATRIX, ids=lambda row: f"{row.method} {row.route}")
def test_authorisation_matrix(world: World, row: Row) -> None:
    got = {}
    for identity in IDENTITIES:
        job = world.new_job() if row.fresh_job else world.job
        if row.finished:
            world.h.client.post(f"/jobs/{job}/cancel", headers=world.headers("owner"))
        response = world.h.client.request(
            row.method,
            (row.url or row.route).format(job=job),
            json=row.body,
            content=row.content,
            headers=world.headers(identity),
        )
        got[identity] = response.status_code
        if response.status_code == 401:
            assert response.headers["WWW-Authenticate"] == "Bearer"
        if response.status_code == 404 and row.method != "HEAD":  # what an unknown id gets
            assert response.json() == {"detail": f"job not found: no job has the id {job!r}"}
    assert got == row.expected


def test_the_matrix_covers_every_route(world: World) -> None:
    """A new route must take its place in the matrix (and so decide who may call it)."""
    app = world.h.client.app
    routes = {
        (method, route.path)
        for route in app.routes  # type: ignore[attr-defined]
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    covered = {(row.method, row.route) for row in MATRIX}
    assert routes - covered == set()


@pytest.mark.parametrize("sse", [False, True])
def test_another_users_log_stream_is_404_before_it_starts(world: World, sse: bool) -> None:
    accept = {"Accept": "text/event-stream"} if sse else {}
    url = f"/jobs/{world.job}/logs?follow=true"
    response = world.h.client.get(url, headers={**world.headers("other"), **accept})
    assert response.status_code == 404
    assert response.json() == {"detail": f"job not found: no job has the id {world.job!r}"}


def test_lists_hold_only_your_jobs_and_an_admin_sees_all(world: World) -> None:
    bobs = world.h.client.post("/jobs", json={}, headers=world.headers("other")).json()["id"]

    def ids(identity: str) -> set[str]:
        page = world.h.client.get("/jobs", headers=world.headers(identity)).json()
        assert page["total"] == len(page["items"])
        return {job["id"] for job in page["items"]}

    assert ids("owner") == {world.job}
    assert ids("other") == {bobs}
    assert ids("admin") == {world.job, bobs}
    # Cancelling names who did it; an admin may cancel anyone's job.
    cancelled = world.h.client.post(f"/jobs/{bobs}/cancel", headers=world.headers("admin"))
    assert cancelled.json()["cancel_requested_by"] == "root"
    events = world.h.client.get(f"/jobs/{world.job}/events", headers=world.headers("owner"))
    assert [(e["kind"], e["actor"]) for e in events.json()] == [("submitted", "alice")]


def test_a_malformed_or_foreign_scheme_token_is_401(world: World) -> None:
    for header in ("Basic YWxpY2U6cHc=", "Bearer", "Bearer " + "x" * 5000, "ty_" + "A" * 43):
        response = world.h.client.get("/jobs", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_agents_hide_other_users_job_ids(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Which job holds a GPU: a user sees their own job ids, not anyone else's."""
    service = world.h.system.service
    now = datetime.now(UTC)
    holding = AgentInfo(
        id="a1",
        hostname="gpu-host",
        started_at=now,
        heartbeat_at=now,
        stopped_at=None,
        slots=2,
        memory_bytes=1 << 30,
        cpus=2.0,
        gpu_ids=["0", "1"],
        engine_error=None,
        running=1,
        held_memory_bytes=0,
        held_cpus=0.0,
        gpu_holders={"0": world.job},
    )
    monkeypatch.setattr(service.queue, "agents", lambda: [holding])

    def holders(identity: str) -> dict[str, str]:
        [agent] = world.h.client.get("/agents", headers=world.headers(identity)).json()
        held: dict[str, str] = agent["gpus"]["held"]
        return held

    assert holders("other") == {"0": "(hidden)"}
    assert holders("owner") == {"0": world.job}
    assert holders("admin") == {"0": world.job}


# --- single-user mode -----------------------------------------------------------------------


def test_single_user_mode_until_a_token_exists(
    api: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    client = api.client
    app = create_app(api.system.settings, system_=api.system)
    with caplog.at_level(logging.INFO, logger="trainyard.api"), TestClient(app):
        pass  # the lifespan says which mode runs
    assert "no API token exists: single-user mode" in caplog.text
    job = client.post("/jobs", json={})
    assert job.status_code == 201
    job_id = job.json()["id"]
    assert client.get(f"/jobs/{job_id}").status_code == 200
    cancelled = client.post(f"/jobs/{job_id}/cancel").json()
    assert cancelled["cancel_requested_by"] == "api"  # as before tokens existed
    assert client.get("/jobs", headers=bearer(WRONG_TOKEN)).status_code == 401

    # A page of another site cannot drive the API through this machine's browser.
    evil = client.post("/jobs", json={}, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403
    assert "TRAINYARD_CORS_ORIGINS" in evil.json()["detail"]
    assert client.post("/jobs", json={}, headers={"Origin": "null"}).status_code == 403
    same = client.post("/jobs", json={}, headers={"Origin": "http://127.0.0.1:8000"})
    assert same.status_code == 201

    # The first token switches tokens on at once, without a restart.
    store = api.system.service.tokens
    alice = store.create("alice")[1]
    root = store.create("root", admin=True)[1]
    assert client.get("/jobs").status_code == 401
    assert client.get(f"/jobs/{job_id}", headers=bearer(alice)).status_code == 404
    assert client.get(f"/jobs/{job_id}", headers=bearer(root)).status_code == 200
    # With a token, a browser cannot send it by itself: no origin check is needed.
    foreign = client.get("/jobs", headers={**bearer(alice), "Origin": "https://evil.example"})
    assert foreign.status_code == 200
    # Revoking every token keeps the API locked; it does not reopen single-user mode.
    for token in store.list():
        store.revoke(token.id)
    assert client.get("/jobs").status_code == 401
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="trainyard.api"), TestClient(app):
        pass
    assert "API tokens are required" in caplog.text


def test_jobs_from_before_tokens_belong_to_local(api: Harness) -> None:
    """The migration gives jobs without an owner to `local`: a token for user local sees
    them, other users do not, admins do."""
    job_id = api.client.post("/jobs", json={}).json()["id"]
    store = api.system.service.tokens
    local = store.create("local")[1]
    alice = store.create("alice")[1]
    assert api.client.get(f"/jobs/{job_id}", headers=bearer(local)).status_code == 200
    assert api.client.get(f"/jobs/{job_id}", headers=bearer(alice)).status_code == 404


# --- env values are secrets -----------------------------------------------------------------


def test_env_values_never_come_back(world: World) -> None:
    client, owner = world.h.client, world.headers("owner")
    env = {"WANDB_API_KEY": SECRET, "HF_TOKEN": SECRET + "2"}
    submitted = client.post("/jobs", json={"env": env}, headers=owner)
    answers = [
        submitted,
        client.get(f"/jobs/{submitted.json()['id']}", headers=owner),
        client.get(f"/train/{submitted.json()['id']}", headers=owner),
        client.get("/jobs", headers=owner),
        client.get("/jobs", headers=world.headers("admin")),
        client.post(f"/jobs/{submitted.json()['id']}/cancel", headers=owner),
        client.get(f"/jobs/{submitted.json()['id']}/events", headers=owner),
    ]
    for answer in answers:
        assert answer.status_code in (200, 201), answer.text
        assert SECRET not in answer.text
    assert submitted.json()["env"] == {"WANDB_API_KEY": "***", "HF_TOKEN": "***"}
    assert {j["id"]: j["env"] for j in answers[3].json()["items"]}[world.job] == {
        "WANDB_API_KEY": "***"
    }
    # The queue keeps the real values: the container needs them.
    stored = world.h.system.queue.get(submitted.json()["id"])
    assert stored.env == env


def test_env_values_reach_the_container_but_no_log(
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = start_harness(make_settings(database_url=sqlite_url))
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    show_digest = ["sh", "-c", 'printf %s "$WANDB_API_KEY" | sha256sum']
    with caplog.at_level(logging.DEBUG):
        job = h.submit({"command": show_digest, "env": {"WANDB_API_KEY": SECRET}})
        done = h.wait_final(job["id"])
    assert done["status"] == "succeeded", done
    log = h.logs(job["id"])
    assert f"stdout {digest}" in log  # the container had the real value
    assert SECRET not in log  # and no line of the agent's shows it
    assert SECRET not in h.client.get(f"/jobs/{job['id']}/events").text
    assert SECRET not in h.client.get(f"/jobs/{job['id']}").text
    assert not [r.getMessage() for r in caplog.records if SECRET in r.getMessage()]
    h.wait_no_containers()


# --- quotas ---------------------------------------------------------------------------------


def test_queued_quota_is_per_user_and_says_the_numbers(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], db_url: str
) -> None:
    h = start_harness(make_settings(database_url=db_url, quota_queued=2), with_agent=False)
    store = h.system.service.tokens
    alice, bob = bearer(store.create("alice")[1]), bearer(store.create("bob")[1])
    root = bearer(store.create("root", admin=True)[1])
    for _ in range(2):
        assert h.client.post("/jobs", json={}, headers=alice).status_code == 201
    over = h.client.post("/jobs", json={}, headers=alice)
    assert over.status_code == 429
    assert over.json()["detail"] == (
        "quota: user alice has 2 jobs queued and the per-user limit is 2 "
        "(TRAINYARD_QUOTA_QUEUED); try again when some have started"
    )
    assert over.headers["Retry-After"]
    assert h.client.post("/train", json={}, headers=alice).status_code == 429
    assert h.client.post("/jobs", json={}, headers=bob).status_code == 201  # bob's own quota
    # Admins are not exempt (see agent.core.auth.Quota).
    for _ in range(2):
        assert h.client.post("/jobs", json={}, headers=root).status_code == 201
    assert h.client.post("/jobs", json={}, headers=root).status_code == 429
    # A finished job frees its place.
    first = h.client.get("/jobs", headers=alice).json()["items"][0]["id"]
    h.client.post(f"/jobs/{first}/cancel", headers=alice)
    assert h.client.post("/jobs", json={}, headers=alice).status_code == 201


def test_gpu_quota_counts_starting_and_running_jobs(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], db_url: str
) -> None:
    h = start_harness(make_settings(database_url=db_url, quota_gpus=2), with_agent=False)
    store = h.system.service.tokens
    alice, bob = bearer(store.create("alice")[1]), bearer(store.create("bob")[1])

    def submit(headers: dict[str, str], gpus: int) -> Any:
        return h.client.post("/jobs", json={"resources": {"gpus": gpus}}, headers=headers)

    too_big = submit(alice, 3)
    assert too_big.status_code == 429
    assert "has 0 GPUs in starting or running jobs, this job asks for 3" in too_big.json()["detail"]
    # Queued GPU jobs do not count (no agent here: they stay queued, marked unschedulable).
    running = submit(alice, 2).json()["id"]
    starting = submit(alice, 1).json()["id"]
    # Two of them are claimed by an agent (stored as such: no GPU on this machine).
    for job_id, state in ((running, "running"), (starting, "starting")):
        with h.system.db.transaction() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(status=state))
    over = submit(alice, 1)
    assert over.status_code == 429
    assert over.json()["detail"] == (
        "quota: user alice has 3 GPUs in starting or running jobs, this job asks for 1, and "
        "the per-user limit is 2 (TRAINYARD_QUOTA_GPUS); try again when some have finished"
    )
    assert submit(alice, 0).status_code == 201  # CPU jobs are not limited by it
    assert submit(bob, 2).status_code == 201  # bob's own quota


# --- idempotent submission ------------------------------------------------------------------


def test_the_same_key_returns_the_first_job(world: World) -> None:
    client, owner = world.h.client, world.headers("owner")
    key = {"Idempotency-Key": "sweep-42/run-1"}
    first = client.post("/jobs", json={"name": "a"}, headers={**owner, **key})
    again = client.post("/jobs", json={"name": "b"}, headers={**owner, **key})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["name"] == "a"  # the first job, not a second one
    assert again.headers["Location"] == f"/jobs/{first.json()['id']}"
    assert again.headers["Idempotent-Replayed"] == "true"
    # Another user's same key is theirs alone.
    bobs = client.post("/jobs", json={}, headers={**world.headers("other"), **key})
    assert bobs.status_code == 201
    assert bobs.json()["id"] != first.json()["id"]
    # /train takes the header too.
    train = [
        client.post("/train", json={}, headers={**owner, "Idempotency-Key": "t"}) for _ in "ab"
    ]
    assert [r.status_code for r in train] == [201, 200]
    assert train[0].json()["task_id"] == train[1].json()["task_id"]
    assert client.get("/jobs", headers=owner).json()["total"] == 3  # the world's, a, train


@pytest.mark.parametrize("key", ["k" * 129, "", "with space", "ünïcode".encode()])
def test_a_bad_idempotency_key_is_422(world: World, key: str | bytes) -> None:
    headers = {**world.headers("owner"), "Idempotency-Key": key}
    response = world.h.client.post("/jobs", json={}, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]


def test_a_key_of_128_characters_is_accepted(world: World) -> None:
    headers = {**world.headers("owner"), "Idempotency-Key": "k" * 128}
    assert world.h.client.post("/jobs", json={}, headers=headers).status_code == 201


def test_concurrent_submits_with_one_key_make_one_job(world: World) -> None:
    service = world.h.system.service
    alice = service.authenticate(world.tokens["owner"])
    barrier = threading.Barrier(8)
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            barrier.wait()
            job, created = service.submit_or_get(JobSpec(), user=alice, idempotency_key="race")
            results.append((job.id, created))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert len({job_id for job_id, _ in results}) == 1
    assert sorted(created for _, created in results) == [False] * 7 + [True]
    total = world.h.client.get("/jobs", headers=world.headers("owner")).json()["total"]
    assert total == 2  # the world's job and this one


def test_the_database_itself_refuses_a_second_job_with_one_key(world: World) -> None:
    """Past the service's checks: the unique index on (owner, idempotency_key)."""
    queue = world.h.system.queue
    spec = world.h.system.service.get(world.job)
    with queue.db.transaction() as s:
        s.execute(update(JobRow).where(JobRow.id == world.job).values(idempotency_key="k1"))
    values = {
        name: getattr(spec, name)
        for name in ("name", "image", "memory_bytes", "cpus", "gpus", "max_retries", "priority")
    }
    now = spec.created_at
    with pytest.raises(IntegrityError), queue.db.transaction() as s:
        s.add(
            JobRow(
                **values,
                id=uuid.uuid4().hex,
                owner="alice",
                idempotency_key="k1",
                status="queued",
                params={},
                env={},
                created_at=now,
                updated_at=now,
            )
        )


# --- Host header and CORS -------------------------------------------------------------------


def client_for(h: Harness, base_url: str = "http://127.0.0.1:8000", **overrides: Any) -> TestClient:
    settings = h.system.settings.model_copy(update=overrides)
    return TestClient(create_app(settings, system_=h.system), base_url=base_url)


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:8000", 200),
        ("localhost:8000", 200),
        ("[::1]:8000", 200),
        ("LOCALHOST", 200),
        ("evil.example", 400),
        ("evil.example:8000", 400),
        ("127.0.0.1.evil.example", 400),
        ("testserver", 400),
        ("", 400),
    ],
)
def test_only_allowed_host_names_are_answered(api: Harness, host: str, status: int) -> None:
    client = client_for(api, allowed_hosts="")
    assert client.get("/health", headers={"Host": host}).status_code == status
    assert client.get("/jobs", headers={"Host": host}).status_code == status


def test_configured_host_names_are_answered(api: Harness) -> None:
    client = client_for(api, allowed_hosts="trainyard.example.com,*.corp.example")
    for host, status in [
        ("trainyard.example.com", 200),
        ("gpu.corp.example", 200),
        ("corp.example.evil", 400),
        ("localhost", 200),
        ("evil.example", 400),
    ]:
        assert client.get("/health", headers={"Host": host}).status_code == status, host


def test_no_cors_unless_origins_are_configured(api: Harness) -> None:
    preflight = {
        "Origin": "https://dash.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    plain = client_for(api)
    answer = plain.options("/jobs", headers=preflight)
    assert "access-control-allow-origin" not in answer.headers
    assert "access-control-allow-origin" not in plain.get("/health", headers=preflight).headers

    cors = client_for(api, cors_origins="https://dash.example.com")
    answer = cors.options("/jobs", headers=preflight)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == "https://dash.example.com"
    other = cors.options("/jobs", headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    get = cors.get("/health", headers={"Origin": "https://dash.example.com"})
    assert get.headers["access-control-allow-origin"] == "https://dash.example.com"
    # In single-user mode the configured origin may also drive the API.
    sent = cors.post("/jobs", json={}, headers={"Origin": "https://dash.example.com"})
    assert sent.status_code == 201


# --- binding beyond loopback ----------------------------------------------------------------


def test_public_bind_needs_a_token(api: Harness) -> None:
    public = api.system.settings.model_copy(update={"host": "0.0.0.0", "allow_public_bind": True})
    refused = r"refusing to listen on 0\.0\.0\.0: no API token exists"
    with (
        pytest.raises(UnsafeBind, match=refused),
        TestClient(create_app(public, system_=api.system)),
    ):
        pass
    api.system.service.tokens.create("root", admin=True)
    with TestClient(create_app(public, system_=api.system)) as client:
        assert client.get("/health", headers={"Host": "127.0.0.1"}).status_code == 200


def run_py(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_run_py_refuses_a_public_bind_without_tokens_in_one_line(tmp_path: Path) -> None:
    env = {
        "TRAINYARD_DATA_DIR": str(tmp_path / "data"),
        "TRAINYARD_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'trainyard.db'}",
        "TRAINYARD_HOST": "0.0.0.0",
        "TRAINYARD_ALLOW_PUBLIC_BIND": "1",
    }
    result = run_py("api", env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert "refusing to listen on 0.0.0.0: no API token exists" in errors[0]
    assert "python run.py token create --user NAME" in errors[0]
    # The flag alone was never enough, and is not now.
    env.pop("TRAINYARD_ALLOW_PUBLIC_BIND")
    assert run_py("api", env=env).returncode == 2


def test_token_commands(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'data' / 'trainyard.db'}"
    env = {"TRAINYARD_DATA_DIR": str(tmp_path / "data"), "TRAINYARD_DATABASE_URL": url}
    created = run_py("token", "create", "--user", "alice", env=env)
    assert created.returncode == 0, created.stderr
    alice = created.stdout.strip()
    assert TOKEN_PATTERN.fullmatch(alice), created.stdout  # stdout: the token alone
    assert "shown only this once" in created.stderr
    admin = run_py("token", "create", "--user", "root", "--admin", env=env)
    root = admin.stdout.strip()
    assert "admin 'root'" in admin.stderr

    listing = run_py("token", "list", env=env)
    assert listing.returncode == 0
    assert alice not in listing.stdout and root not in listing.stdout
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["ID", "USER", "ROLE", "TOKEN", "CREATED", "REVOKED"]
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    assert rows["alice"][2] == "user" and rows["root"][2] == "admin"
    assert rows["alice"][3] == alice[:10] + "…"
    assert rows["alice"][-1] == "-"

    from agent.db.engine import Database  # noqa: PLC0415

    db = Database(url)
    store = TokenStore(db)
    assert store.user(alice) == User("alice", admin=False, token_id=rows["alice"][0])
    assert store.user(root) is not None and store.user(root).admin  # type: ignore[union-attr]

    revoked = run_py("token", "revoke", rows["alice"][0][:6], env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.strip() == f"token {rows['alice'][0]} of 'alice' revoked"
    assert store.user(alice) is None
    again = run_py("token", "revoke", alice[:10], env=env)  # by the start of the token
    assert "was already revoked" in again.stdout
    assert run_py("token", "list", env=env).stdout.splitlines()[1].split()[-1] != "-"
    by_secret = run_py("token", "revoke", root, env=env)  # the token itself names it too
    assert by_secret.returncode == 0 and root not in by_secret.stdout
    db.dispose()

    unknown = run_py("token", "revoke", "ffffffff", env=env)
    assert unknown.returncode == 1
    assert "no token matches" in unknown.stderr and "Traceback" not in unknown.stderr
    bad_user = run_py("token", "create", "--user", "no spaces", env=env)
    assert bad_user.returncode == 1 and "user name" in bad_user.stderr
    assert run_py("token", "frobnicate", env=env).returncode == 2
