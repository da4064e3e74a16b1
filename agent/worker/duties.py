"""The agent's periodic duties, each a small unit with its own error handling: watching
the engine, keeping leases (and noticing cancels), and sweeping other agents' expired leases.
The loop in agent.py only decides when each runs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from agent.config import Settings
from agent.core.errors import RuntimeUnavailable, TrainyardError
from agent.core.jobs import JobStatus, Outcome
from agent.core.records import ActiveAttempt, AttemptResult, Claim
from agent.core.retry import RetryPolicy
from agent.db.queue import JobQueue
from agent.joblog import JobLogWriter, job_log_path
from agent.metrics import ATTEMPTS_FINISHED, RETRIES
from agent.runtime.base import Runtime
from agent.worker.execution import AttemptExecution
from agent.worker.supervisor import StopReason

log = logging.getLogger("trainyard.agent")


class Every:
    """A timer for a duty that runs every `seconds` (the first time at once)."""

    def __init__(self, seconds: float, *, start_due: bool = True) -> None:
        self.seconds = seconds
        self._last = -float("inf") if start_due else time.monotonic()

    def due(self, now: float) -> bool:
        if now - self._last < self.seconds:
            return False
        self._last = now
        return True


class EngineWatch:
    """Whether the engine answers. After a failure it is pinged at most every `retry_seconds`;
    when it comes back, `on_back` runs (the agent reconciles what the outage left)."""

    def __init__(
        self, runtime: Runtime, *, retry_seconds: float, on_back: Callable[[], None]
    ) -> None:
        self._runtime = runtime
        self._retry_seconds = retry_seconds
        self._on_back = on_back
        self._lock = threading.Lock()
        self._checked = 0.0
        self.error: str | None = None
        self.version: str | None = None

    def ready(self) -> bool:
        if self.error is None:
            return True
        if time.monotonic() - self._checked < self._retry_seconds:
            return False
        return self.check()

    def suspect(self) -> None:
        """An attempt ended in an infra failure: claim nothing until the engine answers again
        after `retry_seconds`. A single ping now proves little: a dockerd that is shutting
        down (and just killed the job) still answers for a moment."""
        with self._lock:
            if self.error is None:
                self.error = "checking the engine after an infrastructure failure"
                self._checked = time.monotonic()

    def failed(self, error: str) -> None:
        with self._lock:
            if self.error is None or self.error.startswith("checking"):
                log.error("Docker engine unavailable: %s", error)
            self.error = error

    def check(self) -> bool:
        """Ping now (also from job threads after an infra failure)."""
        with self._lock:
            self._checked = time.monotonic()
            was_down = self.error is not None
        try:
            self.version = self._runtime.ping()
        except RuntimeUnavailable as exc:
            self.failed(str(exc))
            return False
        with self._lock:
            self.error = None
        if was_down:
            log.info("Docker engine is back")
            self._on_back()
        return self.error is None


class LeaseKeeper:
    """Renews the leases of running attempts and relays cancels asked for in the database;
    an attempt whose lease another agent took is stopped (only its new owner may write)."""

    def __init__(self, settings: Settings, queue: JobQueue) -> None:
        self._settings = settings
        self._queue = queue

    def tick(self, running: list[AttemptExecution]) -> None:
        if not running:
            return
        cancels = self._queue.cancel_requested({ex.job_id for ex in running})
        for execution in running:
            if execution.job_id in cancels:
                execution.request_stop(StopReason.CANCELLED, cancels[execution.job_id])
        renewed = self._queue.renew_leases(
            self._settings.agent_id,
            [ex.claim.lease_token for ex in running],
            lease_seconds=self._settings.lease_seconds,
        )
        for execution in running:
            if execution.claim.lease_token not in renewed and execution.result is None:
                execution.request_stop(StopReason.LEASE_LOST, f"agent {self._settings.agent_id}")


class Janitor:
    """Jobs whose agent stopped renewing its lease go back to the queue as infra_error."""

    def __init__(self, settings: Settings, queue: JobQueue, policy: RetryPolicy) -> None:
        self._settings = settings
        self._queue = queue
        self._policy = policy

    def sweep(self, mine: Iterable[tuple[str, int]]) -> None:
        alive = set(mine)
        for agent_id, attempt in self._queue.expired():
            if (attempt.job_id, attempt.attempt) in alive:
                continue  # ours and alive: the next renewal extends it
            reason = f"agent {agent_id} stopped renewing its lease"
            record_lost(self._settings, self._queue, self._policy, attempt, reason, owner=agent_id)


def record_lost(
    settings: Settings,
    queue: JobQueue,
    policy: RetryPolicy,
    attempt: ActiveAttempt,
    reason: str,
    *,
    owner: str | None = None,
) -> None:
    """Record an attempt lost with its agent as infra_error (retried on the infra budget).
    `owner` is another agent whose lease expired: its resources stay held until that agent
    confirms its container is gone."""
    job = queue.get(attempt.job_id)
    agent_id = owner or settings.agent_id
    claim = Claim(job, attempt.attempt, attempt.lease_token, attempt.gpu_ids, agent_id)
    decision = policy.decide_for(job, Outcome.INFRA_ERROR, exit_code=None)
    try:
        status = queue.finish(
            claim, attempt.status, AttemptResult(Outcome.INFRA_ERROR, reason), decision
        )
    except TrainyardError as exc:  # it moved on meanwhile: nothing is lost
        log.info("job %s attempt %d: %s", job.id, attempt.attempt, exc)
        return
    finally:
        if owner is None:  # ours, and no container exists for it: its resources are free
            queue.release(settings.agent_id, job.id, attempt.attempt)
    ATTEMPTS_FINISHED.labels(Outcome.INFRA_ERROR.value).inc()
    if status is JobStatus.QUEUED:
        RETRIES.labels(Outcome.INFRA_ERROR.value).inc()
    with JobLogWriter(
        job_log_path(settings.log_dir, job.id),
        max_bytes=settings.log_max_bytes,
        backup_count=settings.log_backup_count,
    ) as writer:
        writer.agent(f"infra_error: {reason}; job {status.value}", attempt=attempt.attempt)
    log.info("job %s attempt %d: %s; job %s", job.id, attempt.attempt, reason, status)
