"""The agent loop: claim what fits → run it → record → retry or finish. Periodic duties
(engine watch, lease keeper, janitor) live in duties.py; the loop only decides when."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from agent.config import Settings
from agent.core.errors import RuntimeUnavailable, TrainyardError
from agent.core.reconcile import container_key, plan
from agent.core.records import Claim
from agent.core.retry import RetryPolicy
from agent.core.scheduling import Capacity
from agent.core.workdirs import UNPACKED_FACTOR
from agent.db.notify import CANCEL_CHANNEL, Listener
from agent.db.queue import JobQueue
from agent.db.workdirs import WorkdirStore
from agent.metrics import HEARTBEATS, QUEUE_WAIT_SECONDS, RUNNING_ATTEMPTS
from agent.metrics_collector import GPU_METRICS
from agent.runtime.base import AGENT_LABEL, Runtime
from agent.worker.duties import EngineWatch, Every, Janitor, LeaseKeeper, record_lost
from agent.worker.execution import Adoption, AttemptExecution
from agent.worker.prepare import Preparer
from agent.worker.supervisor import StopReason
from agent.worker.workdirs import WorkdirCache

log = logging.getLogger("trainyard.agent")

CANCEL_POLL_SECONDS = 1.0
ENGINE_RETRY_SECONDS = 2.0

T = TypeVar("T")


class Agent:
    """Claims jobs that fit this host and runs each in its own thread."""

    def __init__(
        self,
        settings: Settings,
        queue: JobQueue,
        runtime: Runtime,
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
        self.engine = EngineWatch(
            runtime, retry_seconds=ENGINE_RETRY_SECONDS, on_back=self._reconcile_safely
        )
        self.leases = LeaseKeeper(settings, queue)
        self.janitor = Janitor(settings, queue, self.policy)
        self.workdirs = WorkdirCache(
            WorkdirStore(queue.db),
            settings.workdirs_dir,
            max_unpacked_bytes=settings.workdir_max_bytes * UNPACKED_FACTOR,
        )
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._reconcile_lock = threading.Lock()  # two passes at once could adopt a container twice
        # Keyed by (job, attempt): a job's next attempt may start while a previous one (its
        # lease lost) is still stopping.
        self._running: dict[tuple[str, int], tuple[AttemptExecution, threading.Thread]] = {}
        self._thread: threading.Thread | None = None
        self._cancel_hint = threading.Event()  # a NOTIFY said a cancel was asked for
        # Ask the database again when the next delayed retry falls due after an attempt of
        # this agent was requeued, a NOTIFY came, or on every timed poll; not on each submit,
        # freed slot or finished job.
        self._due_hint = threading.Event()
        self._due_hint.set()
        self.preparer: Preparer | None = None
        if settings.prepare_next:
            self.preparer = Preparer(
                settings,
                runtime,
                lambda exclude: queue.peek(capacity, exclude),
                limit=capacity.slots,
            )
        self._listener: Listener | None = None
        if not queue.db.is_sqlite:
            self._listener = Listener(queue.db.url, self._notified)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self.queue.register_agent(
            self.settings.agent_id,
            socket.gethostname(),
            self.capacity,
            endpoint=self.settings.agent_endpoint_url,
        )
        self.engine.check()  # its version for the registry, or the reason it is unreachable
        GPU_METRICS.start()  # per-GPU series, where NVML answers
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

    def stop(self, *, timeout: float | None = None, detach: bool = False) -> None:
        """Stop claiming, and wait for the running attempts. Normally their containers are
        stopped and the jobs requeued; with `detach` (an upgrade) the containers keep running,
        their leases are extended for the successor, which re-attaches them on start."""
        self._stopping.set()
        self._wake.set()
        if self._listener is not None:
            self._listener.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.preparer is not None:
            self.preparer.close()
        with self._lock:
            running = list(self._running.values())
        reason = StopReason.DETACH if detach else StopReason.SHUTDOWN
        for execution, _ in running:
            execution.request_stop(reason, f"agent {self.settings.agent_id}")
        for _, thread in running:
            thread.join(timeout)
        if detach:
            self._extend_detached_leases([execution for execution, _ in running])
        self.runtime.close()
        try:
            self.queue.agent_stopped(self.settings.agent_id)
        except Exception as exc:  # the database may be the reason we stop
            log.warning("could not record the agent's stop: %s", exc)

    def _extend_detached_leases(self, executions: list[AttemptExecution]) -> None:
        tokens = [ex.claim.lease_token for ex in executions if ex.detached]
        if not tokens:
            return
        try:
            self.queue.renew_leases(
                self.settings.agent_id, tokens, lease_seconds=self.settings.detach_lease_seconds
            )
        except TrainyardError as exc:
            log.warning("detach: could not extend the leases of running jobs: %s", exc)
            return
        log.info(
            "detached from %d running job(s); their leases hold for %.0fs for the next agent",
            len(tokens),
            self.settings.detach_lease_seconds,
        )

    def wake(self) -> None:
        """New work may be claimable (called in-process on submit): no polling delay."""
        self._wake.set()

    def _notified(self, channel: str, _payload: str) -> None:
        if channel == CANCEL_CHANNEL:
            self._cancel_hint.set()
        self._due_hint.set()
        self._wake.set()

    def cancel(self, job_id: str, actor: str) -> bool:
        """Fast path for a job running in this process; the DB poll covers every other case."""
        with self._lock:
            mine = [ex for (job, _), (ex, _) in self._running.items() if job == job_id]
        for execution in mine:
            execution.request_stop(StopReason.CANCELLED, actor)
        return bool(mine)

    def running_job_ids(self) -> list[str]:
        with self._lock:
            return list(dict.fromkeys(job_id for job_id, _ in self._running))

    def health(self) -> dict[str, Any]:
        return {
            "ok": True,
            "id": self.settings.agent_id,
            "running": len(self.running_job_ids()),
            "slots": self.capacity.slots,
        }

    def _executions(self) -> list[AttemptExecution]:
        with self._lock:
            return [execution for execution, _ in self._running.values()]

    # --- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        leases = Every(CANCEL_POLL_SECONDS)
        heartbeat = Every(self.settings.heartbeat_seconds)
        reconcile = Every(self.settings.reconcile_interval, start_due=False)
        next_poll = 0.0  # claim at once on start
        woken = True
        due_at: float | None = None  # the next delayed retry, on the monotonic clock
        while not self._stopping.is_set():
            now = time.monotonic()
            if self._cancel_hint.is_set() or leases.due(now):
                self._cancel_hint.clear()
                self._duty("lease keeper", lambda: self.leases.tick(self._executions()))
            if heartbeat.due(now):
                self._duty("heartbeat", self._heartbeat)
            if self._duty("engine watch", self.engine.ready):
                if reconcile.due(now):
                    self._reconcile_safely()
                # Claim when told there is work (submit, NOTIFY, a slot freed), when a
                # delayed retry falls due, or on the poll for work nobody announced.
                if woken or now >= next_poll:
                    next_poll = now + self.settings.poll_interval
                    self._duty("claim", self._fill)
            timeout = min(CANCEL_POLL_SECONDS, max(0.0, next_poll - time.monotonic()))
            if not woken or self._due_hint.is_set():
                self._due_hint.clear()
                due_at = self._next_due_at()
            due = None if due_at is None else max(0.0, due_at - time.monotonic())
            # A retry that is already due but was not claimable here (no room, does not fit)
            # waits for the next poll or wake-up, not for a tight loop of claims.
            if due is not None and 0 < due < timeout:
                timeout, next_poll = due, time.monotonic() + due
            woken = self._wake.wait(timeout)
            self._wake.clear()

    def _duty(self, name: str, fn: Callable[[], T]) -> T | None:
        """One periodic duty: its failure is logged and does not stop the others."""
        try:
            return fn()
        except TrainyardError as exc:
            log.warning("%s: %s", name, exc)
        except Exception:
            log.exception("%s failed; continuing", name)
        return None

    def _heartbeat(self) -> None:
        self.queue.heartbeat(
            self.settings.agent_id,
            engine_error=self.engine.error,
            engine_version=self.engine.version,
        )
        HEARTBEATS.inc()
        self.janitor.sweep((ex.job_id, ex.claim.attempt) for ex in self._executions())

    def _next_due_at(self) -> float | None:
        try:
            due = self.queue.next_due()
        except Exception:
            return None
        if due is None:
            return None
        return time.monotonic() + (due - datetime.now(UTC)).total_seconds()

    def check_engine(self) -> bool:
        return self.engine.check()

    def _slots_full(self) -> bool:
        """Every slot is held by an attempt of this process: a claim would only find that out
        (in a write transaction). Only this agent's releases free its slots, and each wakes it."""
        with self._lock:
            held = sum(1 for execution, _ in self._running.values() if not execution.released)
        return held >= self.capacity.slots

    def _fill(self) -> None:
        while not self._stopping.is_set() and not self._slots_full():
            claim = self.queue.claim(
                self.settings.agent_id,
                self.capacity,
                lease_seconds=self.settings.lease_seconds,
                starvation_seconds=self.settings.starvation_seconds,
            )
            if self.preparer is not None:
                self.preparer.claimed(None if claim is None else (claim.job.id, claim.attempt))
            if claim is None:
                return
            if claim.waiting_since is not None:  # updated_at is the claim's time
                waited = claim.job.updated_at - claim.waiting_since
                QUEUE_WAIT_SECONDS.observe(max(0.0, waited.total_seconds()))
            self._launch(claim)
        if self.preparer is not None and not self._stopping.is_set():
            self.preparer.prepare()  # every slot is busy: the next job's container, ahead

    def _launch(self, claim: Claim, adopt: Adoption | None = None) -> None:
        execution = AttemptExecution(
            claim,
            settings=self.settings,
            queue=self.queue,
            runtime=self.runtime,
            policy=self.policy,
            on_done=self._finished,
            adopt=adopt,
            on_infra_error=self.engine.suspect,
            workdirs=self.workdirs,
            on_freed=self._wake.set,
            take_prepared=self.preparer.take if self.preparer is not None else None,
        )
        thread = threading.Thread(
            target=execution.run, name=f"job-{claim.job.id[:8]}-{claim.attempt}", daemon=True
        )
        with self._lock:
            self._running[(claim.job.id, claim.attempt)] = (execution, thread)
            RUNNING_ATTEMPTS.set(len(self._running))
        GPU_METRICS.track((claim.job.id, claim.attempt), claim.gpu_ids)
        thread.start()

    def _finished(self, execution: AttemptExecution) -> None:
        with self._lock:
            self._running.pop((execution.job_id, execution.claim.attempt), None)
            RUNNING_ATTEMPTS.set(len(self._running))
        GPU_METRICS.finish((execution.job_id, execution.claim.attempt))
        if self.engine.error is None and execution.result is None:
            self.engine.check()  # a platform failure may mean the engine is gone
        if execution.requeued:
            self._due_hint.set()  # when its retry falls due
        self._wake.set()

    # --- reconciliation ------------------------------------------------------------------------

    def _reconcile_safely(self) -> None:
        try:
            with self._reconcile_lock:
                self.reconcile()
        except RuntimeUnavailable as exc:
            self.engine.failed(str(exc))
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
        in_process = {(ex.job_id, ex.claim.attempt) for ex in self._executions()}
        if self.preparer is not None:
            in_process |= self.preparer.keys()  # prepared ahead: not an attempt yet
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
            reason = "the agent restarted and the attempt's container was gone"
            record_lost(self.settings, self.queue, self.policy, attempt, reason)
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
