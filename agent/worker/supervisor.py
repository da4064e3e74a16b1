"""Watch one running container: wait for its exit while its logs are pumped, and stop it
on a cancel, a shutdown, a lost lease or its deadline (by the agent's own clock: the
engine's wait has no deadline). Returns what happened; deciding what it means is the
caller's."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from agent.core.errors import TrainyardError
from agent.runtime.base import Runtime
from agent.worker.logpump import DrainReport, LogPump

log = logging.getLogger("trainyard.agent")

TICK_SECONDS = 0.25
STOP_RETRY_SECONDS = 1.0


class StopReason(StrEnum):
    CANCELLED = "cancelled"  # a person asked
    SHUTDOWN = "shutdown"  # the agent is stopping (the job is requeued)
    LEASE_LOST = "lease_lost"  # another agent owns the job now
    TIMEOUT = "timeout"  # the job ran past its timeout
    DETACH = "detach"  # the agent stops but leaves the container running for its successor
    STALLED = "stalled"  # the job printed nothing for its stall timeout
    DISK_EXCEEDED = "disk_exceeded"  # the job wrote more than its disk budget


@dataclass(frozen=True)
class StopRequest:
    reason: StopReason
    actor: str


@dataclass(frozen=True)
class Supervision:
    exit_code: int | None  # what the engine's wait returned (None if waiting failed)
    stopped_for: StopReason | None
    failure: Exception | None  # waiting for the container failed
    drain: DrainReport
    last_stderr: tuple[str, ...] = ()  # the container's last stderr lines, for the reason
    detail: str = ""  # why the agent stopped it (stall, disk budget), for the reason
    last_lines: tuple[str, ...] = ()  # the container's last lines of either stream


_ANNOUNCE = {
    StopReason.CANCELLED: "cancel requested",
    StopReason.LEASE_LOST: "lease lost (the job moved to another agent)",
    StopReason.SHUTDOWN: "agent stopping",
}


class Supervisor:
    def __init__(
        self,
        runtime: Runtime,
        container_id: str,
        pump: LogPump,
        *,
        deadline: float | None,
        timeout_seconds: int | None,
        grace_seconds: float,
        stop_request: Callable[[], StopRequest | None],
        note: Callable[[str], None],
        stall_seconds: float | None = None,
        disk_over: Callable[[], str | None] | None = None,
        disk_check_seconds: float = 15.0,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self._runtime = runtime
        self._on_exit = on_exit
        self._container_id = container_id
        self._pump = pump
        self._deadline = deadline
        self._timeout_seconds = timeout_seconds
        self._grace = grace_seconds
        self._stop_request = stop_request
        self._note = note
        self._exit_code: int | None = None
        self._failure: Exception | None = None
        self._exited = threading.Event()
        self._stop_failed = threading.Event()
        self._retry_stop_at = 0.0
        self._stall_seconds = stall_seconds
        self._seen_bytes = -1
        self._active_at = time.monotonic()
        self._disk_over = disk_over
        self._disk_check_seconds = disk_check_seconds
        self._disk_checked_at = time.monotonic()
        self.stop_detail = ""  # why a stall or disk stop happened, for the attempt's reason

    def run(self) -> Supervision:
        waiter = threading.Thread(
            target=self._wait, name=f"wait-{self._container_id[:12]}", daemon=True
        )
        self._pump.start()
        waiter.start()
        stopped_for: StopReason | None = None
        while not self._exited.wait(TICK_SECONDS):
            if stopped_for is None:
                stopped_for = self._check_stop()
            if stopped_for is StopReason.DETACH:
                self._pump.abandon()  # the successor resumes from the last line written
                break
            elif self._stop_failed.is_set() and time.monotonic() >= self._retry_stop_at:
                self._note("the engine did not stop the container; asking again")
                self._stop()
        # The attempt is not over until the engine has delivered every line it holds.
        drain = self._pump.finish()
        if self._exited.is_set():
            waiter.join()  # its `on_exit` has run: the caller knows what it freed
        last = tuple(self._pump.last_stderr)
        return Supervision(
            self._exit_code,
            stopped_for,
            self._failure,
            drain,
            last,
            detail=self.stop_detail,
            last_lines=tuple(self._pump.last_lines),
        )

    def _check_stop(self) -> StopReason | None:
        request = self._stop_request()
        how = f"(SIGTERM, SIGKILL after {self._grace:g}s)"
        if request is not None and request.reason is StopReason.DETACH:
            self._note(
                f"agent stopping in detach mode ({request.actor}): the container keeps running "
                "and the next agent with this id re-attaches it"
            )
            return StopReason.DETACH
        if request is not None:
            self._note(
                f"{_ANNOUNCE[request.reason]} by {request.actor}: stopping the container {how}"
            )
            self._stop()
            return request.reason
        now = time.monotonic()
        if self._deadline is not None and now >= self._deadline:
            self._note(f"timeout of {self._timeout_seconds}s reached: stopping the container {how}")
            self._stop()
            return StopReason.TIMEOUT
        if self._stall_seconds is not None:
            if self._pump.bytes_read != self._seen_bytes:  # any output is a sign of life
                self._seen_bytes, self._active_at = self._pump.bytes_read, now
            elif now - self._active_at >= self._stall_seconds:
                self.stop_detail = f"no output for {self._stall_seconds:g}s"
                self._note(f"stalled: {self.stop_detail}; stopping the container {how}")
                self._stop()
                return StopReason.STALLED
        if self._disk_over is not None and now - self._disk_checked_at >= self._disk_check_seconds:
            self._disk_checked_at = now
            over = self._disk_over()
            if over is not None:
                self.stop_detail = over
                self._note(f"disk budget exceeded: {over}; stopping the container {how}")
                self._stop()
                return StopReason.DISK_EXCEEDED
        return None

    def _wait(self) -> None:
        try:
            self._exit_code = self._runtime.wait(self._container_id)
        except Exception as exc:
            self._failure = exc
        finally:
            self._pump.container_exited()
            self._exited.set()
        if self._failure is None and self._on_exit is not None:
            # Beside the drain, not before it: the caller frees what the container held.
            self._on_exit()

    def _stop(self) -> None:
        # The engine keeps the SIGTERM → SIGKILL clock; the call returns once it is dead.
        self._stop_failed.clear()
        threading.Thread(target=self._stop_quietly, name="stop", daemon=True).start()

    def _stop_quietly(self) -> None:
        try:
            self._runtime.stop(self._container_id, grace_seconds=self._grace)
        except TrainyardError as exc:
            log.warning("container %s: stop failed: %s", self._container_id[:12], exc)
            self._retry_stop_at = time.monotonic() + STOP_RETRY_SECONDS
            self._stop_failed.set()
