"""Run one attempt of one job: create → start → stream logs → supervise → record → remove."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from agent.config import Settings
from agent.core.errors import ContainerError, RuntimeUnavailable, StaleState, TrainyardError
from agent.core.jobs import JobStatus, Outcome
from agent.core.loglines import RawLine
from agent.core.outcomes import SIGKILL_EXIT, SIGTERM_EXIT, ExitReport, classify, has_cuda_oom
from agent.core.records import AttemptResult, Claim
from agent.core.retry import RetryPolicy
from agent.core.units import format_memory, human_size
from agent.db.metrics import MetricStore
from agent.db.queue import JobQueue
from agent.joblog import JobLogWriter, job_log_path
from agent.metrics import ATTEMPT_SECONDS, ATTEMPTS_FINISHED, RETRIES, START_LATENCY_SECONDS
from agent.runtime.base import ContainerSpec, ContainerState, Runtime, last_line
from agent.worker.container_spec import container_spec, outputs_path
from agent.worker.disk import directory_bytes
from agent.worker.logpump import LogPump, docker_since
from agent.worker.supervisor import StopReason, StopRequest, Supervision, Supervisor
from agent.worker.training_watch import TrainingWatch
from agent.worker.workdirs import WorkdirCache

log = logging.getLogger("trainyard.agent")


@dataclass(frozen=True)
class Adoption:
    """A container an earlier run of this agent started for this attempt (see reconcile)."""

    container: ContainerState
    status: JobStatus  # the job's status in the database
    started_at: datetime | None  # when the attempt started running, if it did


EXPLAINED_BY_STDERR = frozenset(
    {Outcome.USER_ERROR, Outcome.CUDA_OOM, Outcome.CONFIG_ERROR, Outcome.OOM}
)
STDERR_EXCERPT_CHARS = 800


def stderr_excerpt(lines: tuple[str, ...]) -> str:
    """The last stderr lines, joined and bounded (the end is what explains a crash)."""
    text = " | ".join(line.strip() for line in lines if line.strip())
    if len(text) > STDERR_EXCERPT_CHARS:
        text = "…" + text[-STDERR_EXCERPT_CHARS:]
    return text


class Detached(Exception):
    """The agent left the container running for its successor: nothing to record or remove."""


class AttemptExecution:
    """One container run. `run()` never raises: every ending is recorded as an outcome."""

    def __init__(
        self,
        claim: Claim,
        *,
        settings: Settings,
        queue: JobQueue,
        runtime: Runtime,
        policy: RetryPolicy,
        on_done: Callable[[AttemptExecution], None],
        adopt: Adoption | None = None,
        on_infra_error: Callable[[], object] | None = None,
        workdirs: WorkdirCache | None = None,
        on_freed: Callable[[], object] | None = None,
        take_prepared: Callable[[ContainerSpec], str | None] | None = None,
    ) -> None:
        self.claim = claim
        self.workdirs = workdirs
        self.adopt = adopt
        self.settings = settings
        self.queue = queue
        self.runtime = runtime
        self.policy = policy
        self.on_done = on_done
        self.on_infra_error = on_infra_error
        self.on_freed = on_freed
        self.take_prepared = take_prepared  # a container created ahead for this attempt
        self.released = False  # its resources are free in the ledger
        self.requeued = False  # its job went back to the queue for a retry
        self._stop_request: StopRequest | None = None
        self._stop_event = threading.Event()
        self.container_id: str | None = None
        self.result: AttemptResult | None = None
        self._cuda_oom = False
        self.detached = False
        self.training: TrainingWatch | None = None

    @property
    def job_id(self) -> str:
        return self.claim.job.id

    def request_stop(self, reason: StopReason, actor: str) -> None:
        if self._stop_request is None:
            self._stop_request = StopRequest(reason, actor)
        self._stop_event.set()

    def run(self) -> None:
        job, number = self.claim.job, self.claim.attempt
        writer = JobLogWriter(
            job_log_path(self.settings.log_dir, job.id),
            max_bytes=self.settings.log_max_bytes,
            backup_count=self.settings.log_backup_count,
        )
        expected = JobStatus.STARTING
        started = time.monotonic()
        result: AttemptResult | None = None
        try:
            if self.adopt is None:
                writer.agent(f"claimed by agent {self.settings.agent_id}", attempt=number)
                expected, result = self._execute(writer)
            else:
                expected, result = self._resume(writer)
        except StaleState as exc:
            writer.agent(f"lease lost, leaving the job alone: {exc}", attempt=number)
            log.warning("job %s attempt %d: %s", job.id, number, exc)
        except Detached:
            self.detached = True
        except Exception as exc:  # the agent must outlive any one job
            log.exception("job %s attempt %d: unexpected failure", job.id, number)
            result = AttemptResult(Outcome.INFRA_ERROR, f"agent failure: {exc}")
        self._close_training()  # its last points are stored before the result
        self.result = result
        if result is not None and result.outcome is Outcome.INFRA_ERROR and self.on_infra_error:
            # Before the retry can be claimed: is the engine gone? (The agent claims nothing
            # while it is, instead of burning attempts on a dead engine.)
            self.on_infra_error()
        stored = not self.detached
        try:
            if result is not None:
                stored = self._record(writer, expected, result, time.monotonic() - started)
        finally:
            # A result the database did not take stays with its container: reconcile
            # collects the real exit later instead of calling the attempt lost. A detached
            # container keeps running, holding its resources, for the next agent.
            gone = self._remove_container(writer) if stored else False
            if gone and not self.released:
                self._release()
            writer.close()
            self.on_done(self)

    def _release(self) -> None:
        try:
            self.queue.release(self.settings.agent_id, self.job_id, self.claim.attempt)
        except Exception as exc:  # reconcile releases it later
            log.warning("job %s: could not release its resources: %s", self.job_id, exc)
            return
        self.released = True
        if self.on_freed is not None:
            self.on_freed()

    def _container_exited(self) -> None:
        """An exited container holds no memory, CPU or GPU: the ledger lets them go at once, so
        the next job's claim, create and start overlap this one's log drain, result and removal
        (off the slot's critical path). The removal stays guaranteed: a crash from here on
        leaves a container that reconcile removes, or adopts to collect a result not stored."""
        self._release()

    # --- the steps ---------------------------------------------------------------------------

    def _execute(self, writer: JobLogWriter) -> tuple[JobStatus, AttemptResult]:
        number = self.claim.attempt
        prepared: str | None = None
        try:
            spec = container_spec(self.claim, self.settings, workdir=self._workdir())
            prepared = self.take_prepared(spec) if self.take_prepared is not None else None
            ensure_outputs_dir(
                outputs_path(self.settings, self.job_id), self.settings.container_user
            )
            self.container_id = prepared or self.runtime.create(spec)
            if self._stop_event.is_set():
                return JobStatus.STARTING, self._stopped_before_start()
            self.runtime.start(self.container_id)
        except ContainerError as exc:
            outcome = Outcome.CONFIG_ERROR if exc.permanent else Outcome.INFRA_ERROR
            writer.agent(f"could not start: {exc}", attempt=number)
            return JobStatus.STARTING, AttemptResult(outcome, str(exc))
        except RuntimeUnavailable as exc:
            writer.agent(f"could not start: {exc}", attempt=number)
            return JobStatus.STARTING, AttemptResult(Outcome.INFRA_ERROR, str(exc))
        if not self.queue.mark_running(self.claim, self.container_id):
            raise StaleState(f"job {self.job_id} moved on while its container started")
        START_LATENCY_SECONDS.observe(max(0.0, time.time() - self.claim.job.updated_at.timestamp()))
        writer.agent(
            f"started in container {self.container_id[:12]}"
            f"{' (created while the slot was busy)' if prepared else ''}, limits: "
            f"memory={format_memory(spec.memory_bytes)} (no swap), "
            f"cpus={spec.nano_cpus / 1e9:g}, pids={spec.pids_limit}, "
            f"gpus={','.join(spec.gpu_ids) or 'none'}, network=none, user={spec.user}, "
            f"image={spec.image}{self._more_limits()}",
            attempt=number,
        )
        log.info("job %s attempt %d: running in %s", self.job_id, number, self.container_id[:12])
        deadline = self._deadline(time.time())
        return JobStatus.RUNNING, self._watch(self.container_id, writer, deadline, since=None)

    def _workdir(self) -> Path | None:
        digest = self.claim.job.workdir
        if digest is None:
            return None
        if self.workdirs is None:
            raise ContainerError("this agent cannot run jobs with a workdir", permanent=True)
        return self.workdirs.path(digest)

    def _resume(self, writer: JobLogWriter) -> tuple[JobStatus, AttemptResult]:
        """Take over a container an earlier run of this agent left: re-attach or collect."""
        assert self.adopt is not None
        number, state = self.claim.attempt, self.adopt.container
        self.container_id = state.id
        message = f"agent restarted: re-attached to container {state.id[:12]} ({state.status})"
        writer.agent(message, attempt=number)
        self.queue.note(self.claim, "reattached", f"attempt {number}: {message}")
        expected = self.adopt.status
        try:
            if expected is JobStatus.STARTING:
                if state.status == "created":
                    self.runtime.start(state.id)
                if not self.queue.mark_running(self.claim, state.id):
                    raise StaleState(f"job {self.job_id} moved on while the agent was away")
                expected = JobStatus.RUNNING
        except (ContainerError, RuntimeUnavailable) as exc:
            writer.agent(f"could not start: {exc}", attempt=number)
            return expected, AttemptResult(Outcome.INFRA_ERROR, str(exc))
        point = writer.resume_point()
        writer.skip_through(point)  # the engine replays from `since`: no line twice
        started = self.adopt.started_at.timestamp() if self.adopt.started_at else time.time()
        since = docker_since(point[0])
        return expected, self._watch(state.id, writer, self._deadline(started), since=since)

    def _deadline(self, started_wall: float) -> float | None:
        """The attempt's deadline on the monotonic clock, from when it started running."""
        timeout = self.claim.job.timeout_seconds
        if not timeout:
            return None
        return time.monotonic() + (started_wall + timeout - time.time())

    def _watch(
        self, container_id: str, writer: JobLogWriter, deadline: float | None, *, since: str | None
    ) -> AttemptResult:
        number = self.claim.attempt
        watch_started = time.time()
        supervision = self._supervisor(container_id, writer, deadline, since).run()
        if supervision.stopped_for is StopReason.DETACH:
            raise Detached
        try:
            report = self._exit_report(container_id, supervision, watch_started)
        except RuntimeUnavailable as exc:
            writer.agent(f"lost the Docker engine: {exc}", attempt=number)
            return AttemptResult(Outcome.INFRA_ERROR, str(exc))
        except ContainerError as exc:
            writer.agent(f"the container vanished: {exc}", attempt=number)
            return AttemptResult(Outcome.INFRA_ERROR, f"the container vanished: {exc}")
        if report is None:
            if supervision.stopped_for is StopReason.LEASE_LOST:
                raise StaleState(f"job {self.job_id}: another agent took the job over")
            return AttemptResult(Outcome.INFRA_ERROR, "the agent shut down while the job ran")
        outcome, reason = classify(report, memory_limit=format_memory(self.claim.job.memory_bytes))
        if report.engine_error:
            reason = f"{reason} ({report.engine_error})"
        if outcome in EXPLAINED_BY_STDERR and supervision.last_stderr:
            reason = f"{reason}; last stderr: {stderr_excerpt(supervision.last_stderr)}"
        elif outcome is Outcome.STALLED:
            last = stderr_excerpt(supervision.last_lines) or "(it printed nothing)"
            reason = f"{reason}; last output: {last}"
        if not supervision.drain.complete:
            reason = f"{reason}; {supervision.drain.detail}"
        return AttemptResult(outcome, reason, report.exit_code, report.oom_killed)

    def _stopped_before_start(self) -> AttemptResult:
        request = self._stop_request
        if request is not None and request.reason is StopReason.CANCELLED:
            return AttemptResult(Outcome.CANCELLED, f"cancelled by {request.actor}")
        return AttemptResult(Outcome.INFRA_ERROR, "the agent shut down before the start")

    def _supervisor(
        self, container_id: str, writer: JobLogWriter, deadline: float | None, since: str | None
    ) -> Supervisor:
        self.training = self._training_watch(writer)
        pump = LogPump(
            lambda cid, since_: self.runtime.open_logs(cid, since=since_),
            container_id,
            writer,
            since=since,
            attempt=self.claim.attempt,
            on_lines=self._on_lines,
            stall_seconds=self.settings.log_stall_seconds,
            engine_rotation_bytes=self.settings.engine_log_max_bytes,
            read_engine_copy=lambda cid, since_: self.runtime.open_logs(
                cid, since=since_, follow=False
            ),
            read_engine_tail=lambda cid: last_line(self.runtime, cid),
        )
        job = self.claim.job
        return Supervisor(
            self.runtime,
            container_id,
            pump,
            deadline=deadline,
            timeout_seconds=job.timeout_seconds,
            grace_seconds=self._grace_seconds(),
            stop_request=lambda: self._stop_request,
            note=lambda message: writer.agent(message, attempt=self.claim.attempt),
            stall_seconds=job.stall_timeout_seconds,
            disk_over=(lambda: self._disk_over(container_id)) if job.disk_bytes else None,
            disk_check_seconds=self.settings.disk_check_seconds,
            on_exit=self._container_exited,
        )

    def _more_limits(self) -> str:
        job, parts = self.claim.job, []
        if job.disk_bytes:
            parts.append(f"disk={human_size(job.disk_bytes)}")
        if job.stall_timeout_seconds:
            parts.append(f"stall timeout={job.stall_timeout_seconds}s")
        parts.append(f"stop grace={self._grace_seconds():g}s")
        if self.settings.read_only_rootfs:
            parts.append("read-only root filesystem")
        if job.workdir:
            parts.append(f"workdir={job.workdir[:12]} at /workspace (read-only)")
        return ", " + ", ".join(parts)

    def _grace_seconds(self) -> float:
        own = self.claim.job.stop_grace_seconds
        return float(own) if own is not None else self.settings.stop_grace_seconds

    def _disk_over(self, container_id: str) -> str | None:
        """How far past its budget the job's disk use is (/outputs plus what it wrote in its
        container), or None while within it. A failed measurement is not a verdict."""
        budget = self.claim.job.disk_bytes
        if budget is None:
            return None
        try:
            written = self.runtime.disk_usage(container_id)
            outputs = directory_bytes(outputs_path(self.settings, self.job_id))
        except (TrainyardError, OSError) as exc:
            log.warning("job %s: could not measure its disk use: %s", self.job_id, exc)
            return None
        used = written + outputs
        if used <= budget:
            return None
        return (
            f"{human_size(used)} used ({human_size(outputs)} in /outputs, {human_size(written)} "
            f"in the container's filesystem) of {human_size(budget)}"
        )

    def _exit_report(
        self, container_id: str, supervision: Supervision, watch_started: float
    ) -> ExitReport | None:
        """How the container ended, from the engine; None when the agent left it (shutdown,
        lease lost)."""
        if supervision.failure is not None:
            failure = supervision.failure
            if isinstance(failure, TrainyardError):
                raise failure
            raise RuntimeUnavailable(f"waiting for the container failed: {failure}")
        stopped_for = supervision.stopped_for
        if stopped_for in (StopReason.SHUTDOWN, StopReason.LEASE_LOST):
            return None
        state = self.runtime.inspect(container_id)
        waited = supervision.exit_code if supervision.exit_code is not None else -1
        code = state.exit_code if state.exit_code >= 0 else waited
        oom_event = killed_from_outside = False
        if stopped_for is None and code in (SIGKILL_EXIT, SIGTERM_EXIT) and not state.oom_killed:
            # Ask the engine why it died: a cgroup OOM, or a kill the agent did not send.
            since_wall = (
                self.adopt.started_at.timestamp()
                if self.adopt and self.adopt.started_at
                else watch_started - 1
            )
            actions = self.runtime.events(container_id, since=since_wall, actions=["oom", "kill"])
            oom_event = "oom" in actions
            killed_from_outside = "kill" in actions
        return ExitReport(
            exit_code=code,
            oom_killed=state.oom_killed,
            oom_event=oom_event,
            killed_from_outside=killed_from_outside,
            cuda_oom=self._cuda_oom,
            engine_error=state.error,
            cancelled=stopped_for is StopReason.CANCELLED,
            timed_out=stopped_for is StopReason.TIMEOUT,
            stalled=supervision.detail if stopped_for is StopReason.STALLED else "",
            disk_exceeded=supervision.detail if stopped_for is StopReason.DISK_EXCEEDED else "",
        )

    def _on_lines(self, batch: list[RawLine]) -> None:
        self._scan_lines(batch)
        if self.training is not None:
            self.training.on_lines(batch)

    def _training_watch(self, writer: JobLogWriter) -> TrainingWatch:
        """The attempt's training metrics: JSON lines of its stdout (agent/core/training.py)."""
        adopted = self.adopt.started_at if self.adopt is not None else None
        return TrainingWatch(
            MetricStore(self.queue.db),
            job_id=self.job_id,
            attempt=self.claim.attempt,
            lease_token=self.claim.lease_token,
            attempt_started=adopted.timestamp() if adopted is not None else time.time(),
            written=lambda: writer.container_lines_written,
            max_points=self.settings.metrics_max_points,
            note=lambda message: writer.agent(message, attempt=self.claim.attempt),
        )

    def _close_training(self) -> None:
        if self.training is not None:
            self.training.close()

    def _scan_lines(self, batch: list[RawLine]) -> None:
        if not self._cuda_oom and has_cuda_oom(b"\n".join(text for _, _, text in batch)):
            self._cuda_oom = True

    def _record(
        self, writer: JobLogWriter, expected: JobStatus, result: AttemptResult, seconds: float
    ) -> bool:
        """Store the result; False when the database could not take it (try again later)."""
        job, number = self.claim.job, self.claim.attempt
        decision = self.policy.decide_for(job, result.outcome, exit_code=result.exit_code)
        try:
            status = self.queue.finish(
                self.claim, expected, result, decision, container_id=self.container_id
            )
        except StaleState as exc:  # the lease moved on: the job's new owner writes its fate
            writer.agent(f"result not stored: {exc}", attempt=number)
            log.warning("job %s attempt %d: %s", job.id, number, exc)
            return True
        except TrainyardError as exc:  # e.g. the database is down: reconcile collects it later
            writer.agent(f"result not stored yet, the container is kept: {exc}", attempt=number)
            log.error("job %s attempt %d: result not stored: %s", job.id, number, exc)
            return False
        ATTEMPTS_FINISHED.labels(result.outcome.value).inc()
        ATTEMPT_SECONDS.observe(seconds)
        if status is JobStatus.QUEUED:
            self.requeued = True
            RETRIES.labels(result.outcome.value).inc()
        summary = f"finished: {result.outcome.value} ({result.reason})"
        if decision is not None:
            summary += f"; retry in {decision.delay_seconds:.1f}s ({decision.reason})"
        else:
            summary += f"; job {status.value}"
        writer.agent(summary, attempt=number)
        log.info("job %s attempt %d: %s", job.id, number, summary)
        return True

    def _remove_container(self, writer: JobLogWriter) -> bool:
        """True once the container is confirmed gone (or never existed)."""
        if self.container_id is None:
            return True
        try:
            self.runtime.remove(self.container_id)
        except TrainyardError as exc:
            # Reconciliation removes it later; the job's result is already stored.
            log.warning("job %s: could not remove %s: %s", self.job_id, self.container_id, exc)
            return False
        writer.agent(f"container {self.container_id[:12]} removed", attempt=self.claim.attempt)
        return True


def ensure_outputs_dir(path: Path, container_user: str) -> None:
    """Create the job's output directory, writable by the container's user."""
    path.mkdir(parents=True, exist_ok=True)
    uid, _, gid = container_user.partition(":")
    if os.geteuid() == 0 and uid.isdigit():
        os.chown(path, int(uid), int(gid) if gid.isdigit() else int(uid))
    else:
        path.chmod(0o777)  # a non-root agent cannot chown; let the container user write
