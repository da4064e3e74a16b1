"""An in-memory `Runtime` for fast unit tests of the agent (as procrastinate ships an
in-memory connector): scriptable exits, OOM kills, slow stops, vanishing containers and
engine outages, with no Docker anywhere. Integration and e2e tests use the real engine."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agent.core.errors import ContainerError, RuntimeUnavailable
from agent.core.loglines import RawLine
from agent.runtime.base import JOB_LABEL, ContainerSpec, ContainerState

SIGKILL_EXIT = 137
SIGTERM_EXIT = 143


@dataclass
class Behaviour:
    """What one fake container does once started."""

    output: list[tuple[str, str]] = field(default_factory=list)  # (stream, text) at start
    exit_code: int = 0
    run_seconds: float | None = 0.0  # None: runs until stopped
    oom: bool = False  # ends as the kernel's OOM killer would (137, OOMKilled)
    ignores_sigterm: bool = False  # a stop takes the whole grace period, then SIGKILL
    killed_from_outside: bool = False  # ends 137 with a "kill" event the agent did not send
    vanish: bool = False  # removed behind the agent's back once started
    create_error: Exception | None = None
    start_error: Exception | None = None
    disk_bytes: int = 0  # what it wrote to its own filesystem


Script = Callable[[ContainerSpec], Behaviour]


class _Container:
    def __init__(self, container_id: str, spec: ContainerSpec, behaviour: Behaviour) -> None:
        self.id = container_id
        self.spec = spec
        self.behaviour = behaviour
        self.status = "created"
        self.exit_code = 0
        self.oom_killed = False
        self.events: list[str] = []
        self.output: list[RawLine] = []
        self.changed = threading.Condition()

    def state(self) -> ContainerState:
        return ContainerState(
            self.id, self.status, self.exit_code, self.oom_killed, "", dict(self.spec.labels)
        )

    def exit(self, code: int, *, oom: bool = False, event: str | None = None) -> None:
        with self.changed:
            if self.status != "running":
                return
            self.status, self.exit_code, self.oom_killed = "exited", code, oom
            if event:
                self.events.append(event)
            self.changed.notify_all()


class FakeRuntime:
    """Containers are threads of nothing: they print their script's output, then exit."""

    def __init__(self, script: Script | None = None) -> None:
        self.script: Script = script or (lambda spec: Behaviour())
        self.engine_down = False
        self.containers: dict[str, _Container] = {}
        self.created: list[ContainerSpec] = []
        self.removed: list[str] = []
        self.stops: list[tuple[str, float]] = []
        self.remove_gate: threading.Event | None = None  # set: removals wait until it opens
        self._ids = itertools.count(1)
        self._clock = itertools.count(1)
        self._lock = threading.Lock()

    # --- the protocol ----------------------------------------------------------------------

    def ping(self) -> str:
        self._check_engine()
        return "fake-1.0"

    def create(self, spec: ContainerSpec) -> str:
        self._check_engine()
        behaviour = self.script(spec)
        if behaviour.create_error is not None:
            raise behaviour.create_error
        with self._lock:
            container_id = f"{next(self._ids):064x}"
            self.containers[container_id] = _Container(container_id, spec, behaviour)
            self.created.append(spec)
        return container_id

    def start(self, container_id: str) -> None:
        container = self._get(container_id, "start container")
        behaviour = container.behaviour
        if behaviour.start_error is not None:
            raise behaviour.start_error
        with container.changed:
            container.output = [
                (stream, self._timestamp(), text.encode()) for stream, text in behaviour.output
            ]
            container.status = "running"
            container.changed.notify_all()
        if behaviour.vanish:
            _daemon_timer(0.05, self._vanish, container_id)
        elif behaviour.run_seconds is not None:
            _daemon_timer(behaviour.run_seconds, self._end_on_its_own, container)

    def open_logs(
        self,
        container_id: str,
        *,
        since: str | None = None,
        follow: bool = True,
        tail: int | None = None,
    ) -> FakeLogStream:
        return FakeLogStream(
            self._get(container_id, "read logs"),
            since=since,
            follow=follow,
            check_engine=self._check_engine,
            tail=tail,
        )

    def wait(self, container_id: str) -> int:
        container = self._get(container_id, "wait for container")
        with container.changed:
            while container.status in ("created", "running"):
                container.changed.wait(0.05)
                self._check_engine()
                if container_id not in self.containers:
                    raise ContainerError("wait for container: No such container")
            if container.status == "removed":  # vanished while waited for
                raise ContainerError("wait for container: No such container")
            return container.exit_code

    def inspect(self, container_id: str) -> ContainerState:
        return self._get(container_id, "inspect container").state()

    def stop(self, container_id: str, *, grace_seconds: float) -> None:
        self._check_engine()
        container = self.containers.get(container_id)
        if container is None:  # as DockerRunner.stop: a container already gone is stopped
            return
        self.stops.append((container_id, grace_seconds))
        if container.behaviour.ignores_sigterm:
            # SIGKILL once the grace period is over, unless it ended on its own meanwhile.
            with container.changed:
                container.changed.wait_for(lambda: container.status != "running", grace_seconds)
            container.exit(SIGKILL_EXIT)
        else:
            container.exit(SIGTERM_EXIT)

    def disk_usage(self, container_id: str) -> int:
        self._check_engine()
        return self.containers[container_id].behaviour.disk_bytes

    def remove(self, container_id: str) -> bool:
        if self.remove_gate is not None:
            self.remove_gate.wait()
        self._check_engine()
        with self._lock:
            container = self.containers.pop(container_id, None)
        if container is None:
            return False
        container.exit(SIGKILL_EXIT)
        self.removed.append(container_id)
        return True

    def find(self, job_label_value: str | None = None, **labels: str) -> list[ContainerState]:
        self._check_engine()
        wanted = dict(labels)
        if job_label_value is not None:
            wanted[JOB_LABEL] = job_label_value
        with self._lock:
            found = list(self.containers.values())
        return [
            c.state()
            for c in found
            if JOB_LABEL in c.spec.labels
            and all(c.spec.labels.get(key) == value for key, value in wanted.items())
        ]

    def events(self, container_id: str, *, since: float, actions: list[str]) -> list[str]:
        container = self._get(container_id, "read engine events")
        return [event for event in container.events if event in actions]

    def close(self) -> None:
        pass

    # --- scripting ---------------------------------------------------------------------------

    def running(self) -> list[str]:
        with self._lock:  # job threads add and remove containers meanwhile
            found = list(self.containers.values())
        return [c.id for c in found if c.status == "running"]

    def _end_on_its_own(self, container: _Container) -> None:
        behaviour = container.behaviour
        if behaviour.oom:
            container.exit(SIGKILL_EXIT, oom=True, event="oom")
        elif behaviour.killed_from_outside:
            container.exit(SIGKILL_EXIT, event="kill")
        else:
            container.exit(behaviour.exit_code)

    def _vanish(self, container_id: str) -> None:
        with self._lock:
            container = self.containers.pop(container_id, None)
        if container is not None:
            with container.changed:
                container.status = "removed"
                container.changed.notify_all()

    def _get(self, container_id: str, doing: str) -> _Container:
        self._check_engine()
        container = self.containers.get(container_id)
        if container is None:
            raise ContainerError(f"{doing}: No such container: {container_id[:12]}")
        return container

    def _check_engine(self) -> None:
        if self.engine_down:
            raise RuntimeUnavailable("Docker engine unreachable (fake outage)")

    def _timestamp(self) -> bytes:
        # Distinct, increasing, and in the engine's exact format.
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{now}.{next(self._clock) % 10**9:09d}Z".encode()


def _daemon_timer(seconds: float, fn: Callable[..., None], *args: object) -> None:
    # A daemon: a container scripted to run for long must not keep the test process alive.
    timer = threading.Timer(seconds, fn, args=args)
    timer.daemon = True
    timer.start()


class FakeLogStream:
    """The container's output (from `since`), then — when following — the wait for its end.
    Like the engine's connection, a followed stream breaks when the engine goes away."""

    def __init__(
        self,
        container: _Container,
        *,
        since: str | None,
        follow: bool,
        check_engine: Callable[[], None] = lambda: None,
        tail: int | None = None,
    ) -> None:
        self._container = container
        self._tail = tail
        self._since = since
        self._follow = follow
        self._check_engine = check_engine
        self._closed = False
        self.bytes_read = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        with self._container.changed:
            self._container.changed.notify_all()

    def __iter__(self) -> Iterator[list[RawLine]]:
        container = self._container
        with container.changed:
            while self._follow and container.status == "created" and not self._closed:
                container.changed.wait(0.05)
                self._check_engine()
        lines = [line for line in container.output if self._wanted(line[1])]
        if self._tail is not None:
            lines = lines[-self._tail :] if self._tail > 0 else []
        if lines and not self._closed:
            self.bytes_read += sum(len(text) + 40 for _, _, text in lines)
            yield lines
        with container.changed:
            while self._follow and container.status == "running" and not self._closed:
                container.changed.wait(0.05)
                self._check_engine()

    def _wanted(self, timestamp: bytes) -> bool:
        if self._since is None:
            return True
        seconds, _, nanos = self._since.partition(".")
        base = datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return timestamp.decode() >= f"{base}.{nanos.ljust(9, '0')}Z"
