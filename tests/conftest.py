"""Shared fixtures. Integration tests use the real Docker engine and real databases."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import psycopg
import pytest
from fastapi.testclient import TestClient

from agent.config import Settings
from agent.db.migrate import upgrade
from agent.wiring import System
from api.app import create_app

PG_ADMIN_DSN = os.environ.get(
    "TRAINYARD_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TEST_IMAGE = os.environ.get("TRAINYARD_TEST_IMAGE", "trainyard/train:latest")
FINAL = {"succeeded", "failed", "cancelled"}
os.environ.setdefault("TRAINYARD_ALLOWED_HOSTS", "testserver,x")  # TestClient's and raw sockets'


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(version="auto")
        client.ping()
    except Exception as exc:
        pytest.fail(f"the Docker engine is not reachable ({exc}); run the tests with `make test`")
    if not client.images.list(name=TEST_IMAGE):
        pytest.fail(f"image {TEST_IMAGE} is missing; `make test` builds it")
    yield client
    leftover = [
        c["Names"]
        for c in client.api.containers(all=True, filters={"label": "trainyard.job_id"})
        if c["Labels"].get("trainyard.agent", "").startswith("test-")
    ]
    client.close()
    assert not leftover, f"containers left behind by the tests: {leftover}"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated once, dropped at the end."""
    name = f"trainyard_test_{os.getpid()}"
    try:
        admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_DSN}: {exc}")
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    upgrade(url)
    yield url
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'trainyard.db'}"
    url: str = request.getfixturevalue("pg_database")
    reset_postgres(url)
    return url


def reset_postgres(url: str) -> None:
    """Empty every table of the session's PostgreSQL database between tests."""
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        conn.execute(
            "TRUNCATE jobs, attempts, events, gpu_holds, agents, tokens RESTART IDENTITY CASCADE"
        )


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'data' / 'trainyard.db'}"


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    agent_id = f"test-{uuid.uuid4().hex[:10]}"

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "log_dir": tmp_path / "logs",
            "agent_id": agent_id,
            "max_concurrent_jobs": 2,
            "stop_grace_seconds": 2,
            "poll_interval": 0.5,
            "retry_backoff_seconds": 0.2,
            "default_memory": "256m",
            "default_cpus": 0.5,
            "default_image": TEST_IMAGE,
            "gpus": "none",
        }
        values.update(overrides)
        return Settings(**values)

    return make


class Harness:
    """A running System plus an HTTP client for it, and helpers to wait on jobs."""

    def __init__(self, system: System, client: TestClient, docker_client: docker.DockerClient):
        self.system = system
        self.client = client
        self.docker = docker_client

    @property
    def agent_id(self) -> str:
        return self.system.settings.agent_id

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post("/jobs", json=body)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def wait_for(
        self, job_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if predicate(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job never reached the expected state: {job}")
            time.sleep(0.1)

    def wait_final(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        return self.wait_for(job_id, lambda j: j["status"] in FINAL, timeout)

    def logs(self, job_id: str, tail: int = 1000) -> str:
        response = self.client.get(f"/jobs/{job_id}/logs", params={"tail": tail})
        assert response.status_code == 200, response.text
        return response.text

    def wait_no_containers(self, timeout: float = 15) -> None:
        """The agent removes a container right after storing the result; allow it that moment."""
        deadline = time.monotonic() + timeout
        while self.containers():
            if time.monotonic() > deadline:
                raise AssertionError(f"containers still exist: {self.containers()}")
            time.sleep(0.05)

    def containers(self) -> list[dict[str, Any]]:
        """This agent's containers (low-level list: no per-container inspect to race with)."""
        found: list[dict[str, Any]] = self.docker.api.containers(
            all=True, filters={"label": f"trainyard.agent={self.agent_id}"}
        )
        return found


@pytest.fixture
def start_harness(
    docker_client: docker.DockerClient,
) -> Iterator[Callable[..., Harness]]:
    """Start a System (API + embedded agent) on the given settings; stop it and check leaks."""
    started: list[tuple[System, TestClient]] = []

    def start(settings: Settings, *, with_agent: bool = True) -> Harness:
        system = System.build(settings, with_agent=with_agent)
        system.start()
        client = TestClient(create_app(settings, system_=system))
        started.append((system, client))
        return Harness(system, client, docker_client)

    yield start
    agent_ids = set()
    for system, client in started:
        client.close()
        system.close(timeout=30)
        agent_ids.add(system.settings.agent_id)
    leaked = []
    for agent_id in agent_ids:
        for container in docker_client.api.containers(
            all=True, filters={"label": f"trainyard.agent={agent_id}"}
        ):
            leaked.append(container["Names"])
            docker_client.api.remove_container(container["Id"], force=True)
    assert not leaked, f"containers left after the test: {leaked}"


@pytest.fixture
def harness(
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    database_url: str,
) -> Harness:
    return start_harness(make_settings(database_url=database_url))
