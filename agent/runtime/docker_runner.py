"""Everything Trainyard asks of the Docker engine. The only module that imports `docker`."""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.types import DeviceRequest

from agent.errors import ContainerError, ImageNotFound, RuntimeUnavailable

JOB_LABEL = "trainyard.job_id"
ATTEMPT_LABEL = "trainyard.attempt"
AGENT_LABEL = "trainyard.agent"

_STREAMS = {1: "stdout", 2: "stderr"}
_TIMESTAMP = re.compile(rb"^(\d{4}-\d\d-\d\dT[0-9:.]+Z) ?")
# Engine answers that mean the job can never run as written.
_PERMANENT = (
    "executable file not found",
    "no such file or directory",
    "permission denied",
    "could not select device driver",
    "invalid reference format",
    "unknown or invalid runtime",
    "is not a valid",
)

T = TypeVar("T")


@dataclass(frozen=True)
class ContainerSpec:
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


@dataclass(frozen=True)
class LogLine:
    stream: str
    timestamp: str
    text: str


@dataclass(frozen=True)
class ContainerState:
    id: str
    status: str  # created | running | exited | dead | ...
    exit_code: int
    oom_killed: bool
    error: str
    labels: dict[str, str]


def translate(exc: Exception, doing: str) -> Exception:
    """Map a docker-py / requests error to Trainyard's exceptions, in one place."""
    if isinstance(exc, docker.errors.ImageNotFound):
        return ImageNotFound(
            f"{doing}: image not found on this host ({_explain(exc)}); build or load it first, "
            "or use an image the agent has"
        )
    if isinstance(exc, requests.exceptions.ConnectionError | docker.errors.DockerException) and (
        not isinstance(exc, docker.errors.APIError)
    ):
        return RuntimeUnavailable(f"{doing}: Docker engine unreachable ({exc})")
    if isinstance(exc, docker.errors.APIError):
        text = _explain(exc)
        lowered = text.lower()
        if "could not select device driver" in lowered:
            return ContainerError(
                f"{doing}: this host has no GPU runtime (Docker said: {text}); "
                "ask for gpus: 0 or run it where GPUs exist",
                permanent=True,
            )
        permanent = exc.status_code in (400, 404) and any(p in lowered for p in _PERMANENT)
        return ContainerError(f"{doing}: {text}", permanent=permanent)
    if isinstance(exc, requests.exceptions.RequestException):
        return RuntimeUnavailable(f"{doing}: Docker engine did not answer ({exc})")
    return exc


def _explain(exc: docker.errors.APIError) -> str:
    explanation = exc.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", "replace")
    return str(explanation or exc)


def _call(doing: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise translate(exc, doing) from exc


class DockerRunner:
    """A thin, typed face over the Docker SDK: create, start, logs, wait, stop, remove."""

    def __init__(self, base_url: str | None = None, *, timeout: float = 60.0) -> None:
        self._base_url = base_url
        self._timeout = timeout
        self._client: docker.DockerClient | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            kwargs: dict[str, Any] = {"version": "auto", "timeout": self._timeout}
            if self._base_url:
                self._client = _call(
                    "connect", lambda: docker.DockerClient(base_url=self._base_url, **kwargs)
                )
            else:
                self._client = _call("connect", lambda: docker.from_env(**kwargs))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def ping(self) -> str:
        """The engine's version, or RuntimeUnavailable."""
        try:
            # The lambda defers `self.client`, so a failed connect is translated too.
            version = _call("ping", lambda: self.client.version())  # noqa: PLW0108
        except RuntimeUnavailable:
            self.close()  # reconnect next time: the engine may have restarted
            raise
        return str(version.get("Version", "unknown"))

    def create(self, spec: ContainerSpec) -> str:
        device_requests = (
            [DeviceRequest(device_ids=list(spec.gpu_ids), capabilities=[["gpu"]])]
            if spec.gpu_ids
            else None
        )
        volumes = {host: {"bind": inner, "mode": "rw"} for host, inner in spec.mounts.items()}
        container = _call(
            f"create container for {spec.image}",
            lambda: self.client.containers.create(
                spec.image,
                command=spec.command,
                name=spec.name,
                environment=spec.env,
                labels=spec.labels,
                mem_limit=spec.memory_bytes,
                memswap_limit=spec.memory_bytes,  # swap never above the memory limit
                nano_cpus=spec.nano_cpus,
                pids_limit=spec.pids_limit,
                user=spec.user,
                network_mode="none",
                security_opt=["no-new-privileges"],
                cap_drop=["ALL"],
                device_requests=device_requests,
                volumes=volumes or None,
                detach=True,
                auto_remove=False,  # the agent removes it after storing the result
            ),
        )
        return str(container.id)

    def start(self, container_id: str) -> None:
        _call("start container", lambda: self.client.api.start(container_id))

    def stream_logs(self, container_id: str, *, since: str | None = None) -> Iterator[LogLine]:
        """Follow stdout and stderr, with the engine's timestamps, until the container ends."""
        api = self.client.api
        params: dict[str, Any] = {
            "stdout": 1,
            "stderr": 1,
            "timestamps": 1,
            "follow": 1,
            "tail": "all",
        }
        if since:
            params["since"] = since
        url = api._url("/containers/{0}/logs", container_id)
        response = _call("read logs", lambda: api._get(url, params=params, stream=True))
        _call("read logs", lambda: api._raise_for_status(response))
        try:
            yield from _log_lines(api, response)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise translate(exc, "read logs") from exc
        finally:
            response.close()

    def events(self, container_id: str, *, since: float, actions: list[str]) -> list[str]:
        """The engine's events of these kinds (e.g. "oom", "kill") for one container."""
        # `until` a moment ahead makes the engine answer what it has and close the stream.
        until = time.time() + 0.3
        stream = _call(
            "read engine events",
            lambda: self.client.api.events(
                since=f"{since:.9f}",
                until=f"{until:.9f}",
                filters={"container": [container_id], "event": actions},
                decode=True,
            ),
        )
        try:
            return [str(event.get("Action", "")) for event in stream]
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise translate(exc, "read engine events") from exc
        finally:
            stream.close()

    def wait(self, container_id: str) -> int:
        """Block until the container exits (no HTTP timeout: deadlines are the caller's)."""
        result = _call(
            "wait for container", lambda: self.client.api.wait(container_id, timeout=None)
        )
        return int(result.get("StatusCode", -1))

    def inspect(self, container_id: str) -> ContainerState:
        data = _call("inspect container", lambda: self.client.api.inspect_container(container_id))
        return _state(data)

    def stop(self, container_id: str, *, grace_seconds: float) -> None:
        """SIGTERM, then SIGKILL after the grace period (the engine keeps that clock)."""
        try:
            _call(
                "stop container",
                lambda: self.client.api.stop(container_id, timeout=max(0, round(grace_seconds))),
            )
        except ContainerError as exc:
            if "no such container" not in str(exc).lower():
                raise

    def remove(self, container_id: str) -> bool:
        """Force-remove; False when it was already gone."""
        try:
            _call(
                "remove container",
                lambda: self.client.api.remove_container(container_id, force=True, v=True),
            )
        except ContainerError as exc:
            lowered = str(exc).lower()
            if "no such container" in lowered or "is already in progress" in lowered:
                return False
            raise
        return True

    def find(self, job_label_value: str | None = None, **labels: str) -> list[ContainerState]:
        """Containers Trainyard started, optionally narrowed by label values."""
        filters = [JOB_LABEL if job_label_value is None else f"{JOB_LABEL}={job_label_value}"]
        filters += [f"{key}={value}" for key, value in labels.items()]
        found = _call(
            "list containers",
            lambda: self.client.api.containers(all=True, filters={"label": filters}),
        )
        states = []
        for item in found:
            try:
                states.append(self.inspect(item["Id"]))
            except ContainerError:
                continue  # removed between list and inspect
        return states


def _state(data: dict[str, Any]) -> ContainerState:
    state = data.get("State") or {}
    return ContainerState(
        id=str(data.get("Id", "")),
        status=str(state.get("Status", "unknown")),
        exit_code=int(state.get("ExitCode", -1)),
        oom_killed=bool(state.get("OOMKilled", False)),
        error=str(state.get("Error", "") or ""),
        labels=dict((data.get("Config") or {}).get("Labels") or {}),
    )


def _log_lines(api: Any, response: Any) -> Iterator[LogLine]:
    # docker-py's public `logs(stream=True)` drops which stream a frame came from, so the
    # multiplexed frames (8-byte header: stream id, 3 zero bytes, big-endian length) are read
    # here, the same way docker-py's own stream helper reads them.
    api._disable_socket_timeout(api._get_raw_response_socket(response))
    raw = response.raw
    pending: dict[int, bytes] = {1: b"", 2: b""}
    while True:
        header = _read_exact(raw, 8)
        if len(header) < 8:
            break
        stream_id, length = struct.unpack(">BxxxL", header)
        payload = _read_exact(raw, length)
        if stream_id not in pending:
            continue
        buffer = pending[stream_id] + payload
        *lines, pending[stream_id] = buffer.split(b"\n")
        for line in lines:
            yield _parse_line(stream_id, line)
        if len(payload) < length:
            break
    for stream_id, rest in pending.items():
        if rest:
            yield _parse_line(stream_id, rest)


def _read_exact(raw: Any, size: int) -> bytes:
    chunks = []
    remaining = size
    while remaining > 0:
        chunk = raw.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _parse_line(stream_id: int, line: bytes) -> LogLine:
    match = _TIMESTAMP.match(line)
    timestamp = match.group(1).decode() if match else ""
    body = line[match.end() :] if match else line
    return LogLine(_STREAMS[stream_id], timestamp, body.rstrip(b"\r").decode("utf-8", "replace"))
