"""Everything Trainyard asks of the Docker engine. The only module that imports `docker`."""

from __future__ import annotations

import contextlib
import math
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.transport.unixconn import UnixHTTPAdapter
from docker.types import DeviceRequest, LogConfig

from agent.core.errors import ContainerError, ImageNotFound, RuntimeUnavailable
from agent.core.loglines import MAX_LINE_BYTES, RawLine
from agent.runtime.base import JOB_LABEL, ContainerSpec, ContainerState
from agent.runtime.logframes import Dechunker, FrameParser

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

# Connections kept open to the engine's socket for reuse: each job holds two for its life (its
# log stream and its wait), so this covers dozens of slots; past it a connection is closed
# after use instead of kept (urllib3 logs that), nothing fails.
POOL_SIZE = 64


class _OnePool(UnixHTTPAdapter):  # type: ignore[misc]  # docker-py is untyped
    """docker-py's adapter keys its connection pools by the request's whole URL: every call
    about another container (its /start, /wait, /logs?…, /json) got a new pool and a new socket
    connection, and up to 25 pools held idle sockets open. Everything goes to one socket, so
    one pool does: calls reuse keep-alive connections."""

    def get_connection(self, url: str, proxies: Any = None) -> Any:
        return super().get_connection("http+docker://localhost", proxies)


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
    """The `Runtime` on a real Docker engine: a thin, typed face over the Docker SDK."""

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
            # The API client is a requests Session: by default every call looks for proxy
            # variables and .netrc in the environment, a third of a call's CPU, and none of
            # that applies to a local socket (an engine over TCP keeps them). On that socket,
            # one connection pool for every call (_OnePool).
            api = self._client.api
            if api.base_url.startswith("http+docker://"):
                api.trust_env = False
            adapter = api.adapters.get("http+docker://")
            if isinstance(adapter, UnixHTTPAdapter):
                one = _OnePool(
                    adapter.socket_path,
                    adapter.timeout,
                    pool_connections=1,
                    max_pool_size=POOL_SIZE,
                )
                api.mount("http+docker://", one)
                api._custom_adapter = one
                adapter.close()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def ping(self) -> str:
        """The engine's version, or RuntimeUnavailable.

        Asks /info, not /version: a dockerd that is shutting down still answers /version for a
        few seconds after "shutdown complete", and the agent would claim jobs it cannot start.
        """
        try:
            # The lambda defers `self.client`, so a failed connect is translated too.
            info = _call("ping", lambda: self.client.info())  # noqa: PLW0108
        except RuntimeUnavailable:
            self.close()  # reconnect next time: the engine may have restarted
            raise
        return str(info.get("ServerVersion", "unknown"))

    def create(self, spec: ContainerSpec) -> str:
        device_requests = (
            [DeviceRequest(device_ids=list(spec.gpu_ids), capabilities=[["gpu"]])]
            if spec.gpu_ids
            else None
        )
        volumes = {host: {"bind": inner, "mode": "rw"} for host, inner in spec.mounts.items()}
        volumes.update(
            {host: {"bind": inner, "mode": "ro"} for host, inner in spec.read_only_mounts.items()}
        )
        api = self.client.api
        # The low-level call: `containers.create` would inspect the new container once more
        # to build a model object, an engine round trip per job for nothing.
        created = _call(
            f"create container for {spec.image}",
            lambda: api.create_container(
                spec.image,
                command=spec.command,
                name=spec.name,
                environment=spec.env,
                labels=spec.labels,
                user=spec.user,
                working_dir=spec.working_dir,
                detach=True,
                host_config=api.create_host_config(
                    mem_limit=spec.memory_bytes,
                    memswap_limit=spec.memory_bytes,  # swap never above the memory limit
                    nano_cpus=spec.nano_cpus,
                    pids_limit=spec.pids_limit,
                    # Docker's init (tini) as PID 1: it forwards SIGTERM to the command, which
                    # as PID 1 itself would ignore it without a handler (and be killed after
                    # the grace period, losing its chance to save), and it reaps zombies.
                    init=True,
                    network_mode="none",
                    security_opt=["no-new-privileges"],
                    cap_drop=["ALL"],
                    device_requests=device_requests,
                    binds=volumes or None,
                    read_only=spec.read_only_rootfs,
                    tmpfs=spec.tmpfs or None,
                    log_config=LogConfig(
                        type=LogConfig.types.JSON,
                        config={
                            "max-size": str(spec.engine_log_max_bytes),
                            "max-file": str(spec.engine_log_max_files),
                        },
                    ),
                    auto_remove=False,  # the agent removes it after storing the result
                ),
            ),
        )
        return str(created["Id"])

    def disk_usage(self, container_id: str) -> int:
        api = self.client.api
        url = api._url("/containers/{0}/json", container_id)
        # size=1 makes the engine add up the writable layer (SizeRw): a walk of what the
        # container wrote, so the agent asks only every TRAINYARD_DISK_CHECK_SECONDS.
        info = _call(
            "measure container disk", lambda: api._result(api._get(url, params={"size": 1}), True)
        )
        return int(info.get("SizeRw") or 0)

    def start(self, container_id: str) -> None:
        _call("start container", lambda: self.client.api.start(container_id))

    def open_logs(
        self,
        container_id: str,
        *,
        since: str | None = None,
        follow: bool = True,
        tail: int | None = None,
    ) -> LogStream:
        """The container's stdout and stderr with the engine's timestamps, as line batches.

        With ``follow`` the stream ends when the container has ended and every line the engine
        holds was sent; without it, at what the engine holds now."""
        api = self.client.api
        params: dict[str, Any] = {
            "stdout": 1,
            "stderr": 1,
            "timestamps": 1,
            "follow": 1 if follow else 0,
            "tail": "all" if tail is None else str(tail),
        }
        if since:
            params["since"] = since
        url = api._url("/containers/{0}/logs", container_id)
        response = _call("read logs", lambda: api._get(url, params=params, stream=True))
        try:
            _call("read logs", lambda: api._raise_for_status(response))
        except Exception:
            response.close()
            raise
        return LogStream(api, response)

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
                # Whole seconds on the wire: round up, so a grace period is never cut short.
                lambda: self.client.api.stop(
                    container_id, timeout=max(0, math.ceil(grace_seconds))
                ),
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


class LogStream:
    """One open log stream. Iterating yields batches of lines, one batch per socket read.

    Reads go straight to the connection's buffered socket (``read1``: whatever has arrived,
    up to 1 MiB) and the HTTP chunking and Docker framing are decoded here in bulk: the engine
    sends every line as its own HTTP chunk, and urllib3's per-chunk reads cost more CPU than the
    rest of the agent's log path together. ``close()`` may be called from another thread: it
    shuts the socket down, which ends a blocked read at once."""

    READ_SIZE = 1 << 20

    def __init__(self, api: Any, response: Any, *, max_line: int = MAX_LINE_BYTES) -> None:
        self._response = response
        self._socket = api._get_raw_response_socket(response)
        api._disable_socket_timeout(self._socket)
        self._parser = FrameParser(max_line)
        self._closed = False
        self.bytes_read = 0
        fp = getattr(getattr(response.raw, "_fp", None), "fp", None)
        chunked = "chunked" in response.headers.get("Transfer-Encoding", "").lower()
        if fp is not None and hasattr(fp, "read1"):
            self._read: Callable[[int], bytes] = fp.read1
            self._dechunker: Dechunker | None = Dechunker() if chunked else None
        else:  # not http.client underneath: let urllib3 de-chunk
            self._read = response.raw.read1
            self._dechunker = None

    @property
    def truncated_lines(self) -> int:
        return self._parser.truncated_lines

    def __iter__(self) -> Iterator[list[RawLine]]:
        parser, dechunker = self._parser, self._dechunker
        try:
            while not self._closed:
                data = self._read(self.READ_SIZE)
                if not data:
                    break
                self.bytes_read += len(data)
                if dechunker is not None:
                    data = dechunker.feed(data)
                lines = parser.feed(data)
                if lines:
                    yield lines
                if dechunker is not None and dechunker.done:
                    break
        except (OSError, ValueError, requests.exceptions.RequestException) as exc:
            if self._closed:
                return
            raise RuntimeUnavailable(f"read logs: the stream broke ({exc})") from exc
        rest = parser.finish()
        if rest and not self._closed:
            yield rest

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """End the stream; safe from any thread and more than once."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, AttributeError):
            self._socket.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self._response.close()

    def __enter__(self) -> LogStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
