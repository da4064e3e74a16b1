"""The agent loop: claim what fits → run it → record → retry or finish; renew leases; drain."""

from __future__ import annotations

import logging
import socket
import threading
import time
from datetime import UTC, datetime

from agent.config import Settings
from agent.core.errors import RuntimeUnavailable, TrainyardError
from agent.core.jobs import Outcome
from agent.core.reconcile import container_key, plan
from agent.core.records import ActiveAttempt, AttemptResult, Claim
from agent.core.retry import RetryPolicy
from agent.core.scheduling import Capacity
from agent.db.notify import CANCEL_CHANNEL, Listener
from agent.db.queue import JobQueue
from agent.joblog import JobLogWriter, job_log_path
from agent.metrics import RUNNING_ATTEMPTS
from agent.runtime.docker_runner import AGENT_LABEL, DockerRunner
from agent.worker.execution import Adoption, AttemptExecution

log = logging.getLogger("trainyard.agent")

CANCEL_POLL_SECONDS = 1.0
ENGINE_RETRY_SECONDS = 2.0


class Agent:
    """Claims jobs that fit this host and runs each in its own thread."""

    def __init__(
        self,
        settings: Settings,
        queue: JobQueue,
        runtime: DockerRunner,
        capacity: Capacity,
        *,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.runtime = runtime
        self.capacity = capacity
        self.policy = policy or RetryPolicy(
            base_delay=settings.retry_backoff_seconds, max_delay=settings.retry_backoff_max_seconds
        )
        self.lease_seconds = settings.lease_seconds
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._reconcile_lock = threading.Lock()  # two passes at once could adopt a container twice
        self._running: dict[str, tuple[AttemptExecution, threading.Thread]] = {}
        self._thread: threading.Thread | None = None
        self._engine_error: str | None = None
        self._cancel_hint = threading.Event()  # a NOTIFY said a cancel was asked for
        self._listener: Listener | None = None
        if not queue.db.is_sqlite:
            self._listener = Listener(queue.db.url, self._notified)
        self._engine_checked = 0.0
        self._reconcile_pending = False

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self.queue.register_agent(self.settings.agent_id, socket.gethostname(), self.capacity)
        self._reconcile_safely()
        self._thread = threading.Thread(target=self._loop, name="agent-loop", daemon=True)
        self._thread.start()
        if self._listener is not None:
            self._listener.start()
        log.info(
            "agent %s started: %d slots, %.1f GiB, %g cpus, gpus=%s",
            self.settings.agent_id,
            self.capacity.slots,
            self.capacity.memory_bytes / 2**30,
            self.capacity.cpus,
            ",".join(self.capacity.gpu_ids) or "none",
        )

    def stop(self, *, timeout: float | None = None) -> None:
        """Stop claiming; stop running containers (they are requeued) and wait for them."""
        self._stopping.set()
        self._wake.set()
        if self._listener is not None:
            self._listener.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            running = list(self._running.values())
        for execution, _ in running:
            execution.request_stop("shutdown", f"agent {self.settings.agent_id}")
        for _, thread in running:
            thread.join(timeout)
        self.runtime.close()
        try:
            self.queue.agent_stopped(self.settings.agent_id)
        except Exception as exc:  # the database may be the reason we stop
            log.warning("could not record the agent's stop: %s", exc)

    def wake(self) -> None:
        """New work may be claimable (called in-process on submit): no polling delay."""
        self._wake.set()

    def _notified(self, channel: str, _payload: str) -> None:
        if channel == CANCEL_CHANNEL:
            self._cancel_hint.set()
        self._wake.set()

    def cancel(self, job_id: str, actor: str) -> bool:
        """Fast path for a job running in this process; the DB poll covers every other case."""
        with self._lock:
            entry = self._running.get(job_id)
        if entry is None:
            return False
        entry[0].request_stop("cancelled", actor)
        return True

    def running_job_ids(self) -> list[str]:
        with self._lock:
            return list(self._running)

    # --- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        last_cancel_poll = last_heartbeat = 0.0
        last_reconcile = time.monotonic()
        next_poll = 0.0  # claim at once on start
        woken = True
        while not self._stopping.is_set():
            try:
                now = time.monotonic()
                if self._cancel_hint.is_set() or now - last_cancel_poll >= CANCEL_POLL_SECONDS:
                    self._cancel_hint.clear()
                    last_cancel_poll = now
                    self._poll_cancels_and_renew()
                if now - last_heartbeat >= self.settings.heartbeat_seconds:
                    last_heartbeat = now
                    self.queue.heartbeat(self.settings.agent_id, engine_error=self._engine_error)
                    self._requeue_expired()
                if self._engine_ready():
                    if now - last_reconcile >= self.settings.reconcile_interval:
                        last_reconcile = now
                        self._reconcile_safely()
                    # Claim when told there is work (submit, NOTIFY, a slot freed), when a
                    # delayed retry falls due, or on the poll for work nobody announced.
                    if woken or now >= next_poll:
                        next_poll = now + self.settings.poll_interval
                        self._fill()
            except TrainyardError as exc:
                log.warning("agent loop: %s", exc)
            except Exception:
                log.exception("agent loop failed; continuing")
            timeout = min(CANCEL_POLL_SECONDS, max(0.0, next_poll - time.monotonic()))
            due = self._seconds_until_due()
            if due is not None and due < timeout:
                timeout, next_poll = due, time.monotonic() + due
            woken = self._wake.wait(timeout)
            self._wake.clear()

    def _seconds_until_due(self) -> float | None:
        try:
            due = self.queue.next_due()
        except Exception:
            return None
        if due is None:
            return None
        return max(0.0, (due - datetime.now(UTC)).total_seconds())

    def _engine_ready(self) -> bool:
        if self._engine_error is None:
            return True
        if time.monotonic() - self._engine_checked < ENGINE_RETRY_SECONDS:
            return False
        return self.check_engine()

    def check_engine(self) -> bool:
        self._engine_checked = time.monotonic()
        try:
            self.runtime.ping()
        except RuntimeUnavailable as exc:
            if self._engine_error is None:
                log.error("Docker engine unavailable: %s", exc)
            self._engine_error = str(exc)
            self._reconcile_pending = True  # what the outage left behind is cleared once back
            return False
        if self._engine_error is not None:
            log.info("Docker engine is back")
        self._engine_error = None
        if self._reconcile_pending:
            self._reconcile_safely()
        return self._engine_error is None

    def _fill(self) -> None:
        while not self._stopping.is_set():
            claim = self.queue.claim(
                self.settings.agent_id,
                self.capacity,
                lease_seconds=self.lease_seconds,
                starvation_seconds=self.settings.starvation_seconds,
            )
            if claim is None:
                return
            self._launch(claim)

    def _launch(self, claim: Claim, adopt: Adoption | None = None) -> None:
        execution = AttemptExecution(
            claim,
            settings=self.settings,
            queue=self.queue,
            runtime=self.runtime,
            policy=self.policy,
            on_done=self._finished,
            adopt=adopt,
        )
        thread = threading.Thread(
            target=execution.run, name=f"job-{claim.job.id[:8]}-{claim.attempt}", daemon=True
        )
        with self._lock:
            self._running[claim.job.id] = (execution, thread)
            RUNNING_ATTEMPTS.set(len(self._running))
        thread.start()

    def _finished(self, execution: AttemptExecution) -> None:
        with self._lock:
            self._running.pop(execution.job_id, None)
            RUNNING_ATTEMPTS.set(len(self._running))
        result = execution.result
        if self._engine_error is None and (result is None or result.outcome == "infra_error"):
            self.check_engine()  # a platform failure may mean the engine is gone
        self._wake.set()

    def _poll_cancels_and_renew(self) -> None:
        with self._lock:
            entries = {job_id: entry[0] for job_id, entry in self._running.items()}
        if not entries:
            return
        for job_id, actor in self.queue.cancel_requested(entries).items():
            entries[job_id].request_stop("cancelled", actor)
        renewed = self.queue.renew_leases(
            self.settings.agent_id,
            [ex.claim.lease_token for ex in entries.values()],
            lease_seconds=self.lease_seconds,
        )
        for execution in entries.values():
            if execution.claim.lease_token not in renewed and execution.result is None:
                # Another agent took the job over: stop here; only its new owner may write.
                execution.request_stop("lease_lost", f"agent {self.settings.agent_id}")

    def _requeue_expired(self) -> None:
        """Jobs whose agent stopped renewing its lease go back to the queue as infra_error."""
        with self._lock:
            mine = {(ex.job_id, ex.claim.attempt) for ex, _ in self._running.values()}
        for agent_id, attempt in self.queue.expired():
            if (attempt.job_id, attempt.attempt) in mine:
                continue  # ours and alive: the next renewal extends it
            self._record_infra_error(
                attempt, f"agent {agent_id} stopped renewing its lease", owner=agent_id
            )

    # --- reconciliation ------------------------------------------------------------------------

    def _reconcile_safely(self) -> None:
        self._reconcile_pending = True
        try:
            with self._reconcile_lock:
                self.reconcile()
            self._reconcile_pending = False
        except RuntimeUnavailable as exc:
            self._engine_error = str(exc)
            log.error("reconcile postponed, Docker engine unavailable: %s", exc)
        except TrainyardError as exc:
            log.warning("reconcile failed, will try again: %s", exc)

    def reconcile(self) -> None:
        """Adopt, remove or requeue whatever the engine and the database disagree on."""
        agent_id = self.settings.agent_id
        containers = self.runtime.find(**{AGENT_LABEL: agent_id})
        active = self.queue.active_attempts(agent_id)
        unreleased = self.queue.unreleased(agent_id)
        # Read last: a claim made meanwhile is registered here before its container exists.
        with self._lock:
            in_process = {(ex.job_id, ex.claim.attempt) for ex, _ in self._running.values()}
        todo = plan(containers, active, in_process, unreleased)
        for state in todo.remove:
            if self.runtime.remove(state.id):
                log.info("reconcile: removed container %s (%s)", state.id[:12], state.labels)
            key = container_key(state)
            if key is not None and key in unreleased:
                self.queue.release(agent_id, *key)
        for job_id, number in todo.release:
            self.queue.release(agent_id, job_id, number)
        for attempt in todo.lost:
            self._record_infra_error(
                attempt, "the agent restarted and the attempt's container was gone"
            )
        for attempt, state in todo.adopt:
            log.info(
                "reconcile: job %s attempt %d: adopting container %s (%s)",
                attempt.job_id,
                attempt.attempt,
                state.id[:12],
                state.status,
            )
            job = self.queue.get(attempt.job_id)
            claim = Claim(job, attempt.attempt, attempt.lease_token, attempt.gpu_ids, agent_id)
            self._launch(claim, Adoption(state, attempt.status, attempt.started_at))

    def _record_infra_error(
        self, attempt: ActiveAttempt, reason: str, *, owner: str | None = None
    ) -> None:
        """Record an attempt lost with its agent. `owner` is another agent whose lease expired:
        its resources stay held until that agent confirms its container is gone."""
        job = self.queue.get(attempt.job_id)
        agent_id = owner or self.settings.agent_id
        claim = Claim(job, attempt.attempt, attempt.lease_token, attempt.gpu_ids, agent_id)
        decision = self.policy.decide_for(job, Outcome.INFRA_ERROR, exit_code=None)
        try:
            status = self.queue.finish(
                claim, attempt.status, AttemptResult(Outcome.INFRA_ERROR.value, reason), decision
            )
        except TrainyardError as exc:  # it moved on meanwhile: nothing is lost
            log.info("reconcile: job %s attempt %d: %s", job.id, attempt.attempt, exc)
            return
        finally:
            if owner is None:  # ours, and no container exists for it: its resources are free
                self.queue.release(self.settings.agent_id, job.id, attempt.attempt)
        with JobLogWriter(
            job_log_path(self.settings.log_dir, job.id),
            max_bytes=self.settings.log_max_bytes,
            backup_count=self.settings.log_backup_count,
        ) as writer:
            writer.agent(f"infra_error: {reason}; job {status.value}", attempt=attempt.attempt)
        log.info(
            "reconcile: job %s attempt %d: %s; job %s", job.id, attempt.attempt, reason, status
        )
