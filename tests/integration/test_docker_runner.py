"""`DockerRunner` against the real engine: the calls of a job's life reuse their connections.

docker-py keys its connection pools by the whole URL, so each call about another container
opened a new socket to the engine (and kept up to 25 idle); the runner sends every call
through one pool."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import docker.transport.unixconn
import pytest

from agent.core.errors import ContainerError
from agent.runtime.base import AGENT_LABEL, JOB_LABEL, ContainerSpec
from agent.runtime.docker_runner import DockerRunner
from tests.conftest import TEST_IMAGE


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every new socket connection to the engine, by the pool's URL."""
    made: list[str] = []
    connect = docker.transport.unixconn.UnixHTTPConnection.connect

    def counted(self: docker.transport.unixconn.UnixHTTPConnection) -> None:
        made.append(self.base_url)
        connect(self)

    monkeypatch.setattr(docker.transport.unixconn.UnixHTTPConnection, "connect", counted)
    return made


@pytest.fixture
def runner() -> Iterator[DockerRunner]:
    runner = DockerRunner()
    runner.ping()
    yield runner
    runner.close()


def test_calls_about_many_containers_share_one_connection(
    runner: DockerRunner, connects: list[str]
) -> None:
    for n in range(10):
        with pytest.raises(ContainerError):
            runner.inspect(f"trainyard-no-such-container-{n}")
        runner.remove(f"trainyard-no-such-container-{n}")  # False: already gone
    runner.find(run=uuid.uuid4().hex)
    assert connects == []  # the fixture's ping opened the one connection they all used


def test_a_containers_life_needs_a_connection_per_concurrent_stream(
    runner: DockerRunner, connects: list[str]
) -> None:
    """create, start, the log stream (open while the wait blocks), wait, inspect, remove.
    A log stream is read off its socket and ends with it, so each container costs one new
    connection; every other call reuses a pooled one, whatever the container's id."""
    agent = f"test-runner-{uuid.uuid4().hex[:8]}"
    for n in range(3):
        spec = ContainerSpec(
            name=f"{agent}-{n}",
            image=TEST_IMAGE,
            command=["sh", "-c", "echo one; echo two"],
            env={},
            labels={JOB_LABEL: f"{agent}-{n}", AGENT_LABEL: agent},
            memory_bytes=128 * 2**20,
            nano_cpus=250_000_000,
            pids_limit=64,
            user="1000:1000",
        )
        container_id = runner.create(spec)
        try:
            runner.start(container_id)
            with runner.open_logs(container_id) as stream:
                assert runner.wait(container_id) == 0
                lines = [text for batch in stream for _, _, text in batch]
            assert lines == [b"one", b"two"]
            assert runner.inspect(container_id).exit_code == 0
        finally:
            assert runner.remove(container_id)
    assert runner.find(**{AGENT_LABEL: agent}) == []
    assert len(connects) <= 3 + 1, connects  # one per log stream, one beside the first
