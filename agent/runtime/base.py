"""The container runtime as the agent sees it: a protocol and docker-free types.

`DockerRunner` (docker_runner.py, the only module that imports `docker`) implements it for
the real engine; `FakeRuntime` (fake.py) implements it in memory for unit tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from agent.core.loglines import RawLine
from agent.core.reconcile import AGENT_LABEL, ATTEMPT_LABEL, JOB_LABEL

__all__ = [
    "AGENT_LABEL",
    "ATTEMPT_LABEL",
    "JOB_LABEL",
    "ContainerSpec",
    "ContainerState",
    "LogStream",
    "RawLine",
    "Runtime",
]


@dataclass(frozen=True)
class ContainerSpec:
    """Everything a container is created with. Always: no network, all capabilities dropped,
    no-new-privileges; the rest comes from here."""

    name: str
    image: str
    command: list[str] | None
    env: dict[str, str]
    labels: dict[str, str]
    memory_bytes: int
    nano_cpus: int
    pids_limit: int
    user: str
    gpu_ids: tuple[str, ...] = ()
    mounts: dict[str, str] = field(default_factory=dict)  # host dir -> container dir (rw)
    read_only_mounts: dict[str, str] = field(default_factory=dict)  # host dir -> container dir
    working_dir: str | None = None
    read_only_rootfs: bool = False
    tmpfs: dict[str, str] = field(default_factory=dict)  # container dir -> mount options
    # The engine's own json-file copy of the output, capped (the agent's copy is the job log).
    engine_log_max_bytes: int = 512 * 1024 * 1024
    engine_log_max_files: int = 2


@dataclass(frozen=True)
class ContainerState:
    id: str
    status: str  # created | running | exited | dead | ...
    exit_code: int
    oom_killed: bool
    error: str
    labels: dict[str, str]


class LogStream(Protocol):
    """An open stream of a container's output: batches of lines, closable from any thread."""

    bytes_read: int

    def __iter__(self) -> Iterator[list[RawLine]]: ...

    @property
    def closed(self) -> bool: ...

    def close(self) -> None: ...


def last_line(runtime: Runtime, container_id: str) -> RawLine | None:
    """The last line the engine holds for a container (cheap: the engine reads backwards)."""
    stream = runtime.open_logs(container_id, follow=False, tail=1)
    last: RawLine | None = None
    try:
        for batch in stream:
            last = batch[-1]
    finally:
        stream.close()
    return last


class Runtime(Protocol):
    """What the agent asks of a container engine. Failures are `RuntimeUnavailable` (the
    engine is unreachable) or `ContainerError` (it refused; `permanent` when retrying cannot
    help)."""

    def ping(self) -> str:
        """The engine's version."""
        ...

    def create(self, spec: ContainerSpec) -> str:
        """A new container (not started); its id."""
        ...

    def start(self, container_id: str) -> None: ...

    def open_logs(
        self,
        container_id: str,
        *,
        since: str | None = None,
        follow: bool = True,
        tail: int | None = None,
    ) -> LogStream:
        """stdout and stderr with the engine's timestamps; with `follow`, until it ends;
        with `tail`, only that many last lines."""
        ...

    def wait(self, container_id: str) -> int:
        """Block until the container exits; its exit code."""
        ...

    def inspect(self, container_id: str) -> ContainerState: ...

    def stop(self, container_id: str, *, grace_seconds: float) -> None:
        """SIGTERM, then SIGKILL after the grace period; returns once it is dead."""
        ...

    def disk_usage(self, container_id: str) -> int:
        """Bytes the container has written to its own filesystem (its writable layer)."""
        ...

    def remove(self, container_id: str) -> bool:
        """Force-remove; False when it was already gone."""
        ...

    def find(self, job_label_value: str | None = None, **labels: str) -> list[ContainerState]:
        """Containers Trainyard started, optionally narrowed by label values."""
        ...

    def events(self, container_id: str, *, since: float, actions: list[str]) -> list[str]:
        """The engine's events of these kinds (e.g. "oom", "kill") for one container."""
        ...

    def close(self) -> None: ...
