"""An attempt after its claim: its container, running, its result, its lease, its release.
Every write is fenced by the attempt's lease token."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, bindparam, delete, func, select, update

from agent.core.jobs import JobStatus, check_transition
from agent.core.records import ActiveAttempt, AttemptResult, Claim
from agent.core.retry import RetryDecision
from agent.db import mapping
from agent.db.engine import Database
from agent.db.models import UTCDateTime, attempts, gpu_holds, jobs
from agent.db.transitions import ACTIVE, ADD_EVENT, cas, event_values

# Built once (hot: every attempt runs them).
_NOW = bindparam("b_now", type_=UTCDateTime())
_THE_ATTEMPT = (  # one attempt row, by its bound job id and number
    attempts.c.job_id == bindparam("b_job"),
    attempts.c.number == bindparam("b_attempt"),
)
_RELEASE = (
    update(attempts)
    .where(
        *_THE_ATTEMPT,
        attempts.c.agent_id == bindparam("b_agent"),
        attempts.c.released_at.is_(None),
    )
    .values(released_at=_NOW)
)
_DROP_HOLDS = delete(gpu_holds).where(
    gpu_holds.c.agent_id == bindparam("b_agent"),
    gpu_holds.c.job_id == bindparam("b_job"),
    gpu_holds.c.attempt == bindparam("b_attempt"),
)
# starting → running (`cas`'s compare-and-set, prebuilt).
check_transition(JobStatus.STARTING, JobStatus.RUNNING)
_JOB_RUNNING = (
    update(jobs)
    .where(
        jobs.c.id == bindparam("b_job"),
        jobs.c.status == JobStatus.STARTING.value,
        jobs.c.lease_token == bindparam("b_token"),
    )
    .values(
        status=JobStatus.RUNNING.value,
        updated_at=_NOW,
        started_at=func.coalesce(jobs.c.started_at, _NOW),
    )
)
_ATTEMPT_RUNNING = (
    update(attempts)
    .where(*_THE_ATTEMPT, attempts.c.lease_token == bindparam("b_token"))
    .values(
        started_at=_NOW,
        container_id=func.coalesce(
            bindparam("b_container", type_=String()), attempts.c.container_id
        ),
    )
)
# A job and its current attempt, as `mapping.active` reads them.
_ACTIVE_COLUMNS = (
    jobs.c.id.label("job_id"),
    jobs.c.status,
    attempts.c.agent_id,
    attempts.c.number,
    attempts.c.lease_token,
    attempts.c.container_id,
    attempts.c.memory_bytes,
    attempts.c.cpus,
    attempts.c.gpu_ids,
    attempts.c.started_at,
)
_CURRENT = (attempts.c.job_id == jobs.c.id) & (attempts.c.number == jobs.c.attempt_count)


class Attempts:
    db: Database
    clock: Callable[[], datetime]

    def mark_running(self, claim: Claim, container_id: str | None = None) -> bool:
        """starting → running, with the attempt's container (one transaction for both: the
        container is found by its labels, not by this column, if the agent dies before); False
        when the job moved on meanwhile (e.g. it was cancelled)."""
        now = self.clock()
        which = {
            "b_job": claim.job.id,
            "b_attempt": claim.attempt,
            "b_token": claim.lease_token,
            "b_now": now,
            "b_container": container_id,
        }
        with self.db.begin() as conn:
            if conn.execute(_JOB_RUNNING, which).rowcount != 1:
                return False
            conn.execute(_ATTEMPT_RUNNING, which)
            conn.execute(
                ADD_EVENT,
                event_values(
                    claim.job.id,
                    now,
                    "started",
                    JobStatus.STARTING,
                    JobStatus.RUNNING,
                    claim.agent_id,
                    f"attempt {claim.attempt} running",
                    attempt=claim.attempt,
                ),
            )
            return True

    def finish(
        self,
        claim: Claim,
        expected: JobStatus,
        result: AttemptResult,
        retry: RetryDecision | None,
        *,
        container_id: str | None = None,
    ) -> JobStatus:
        """Store an attempt's result and move the job on: final state, or back to the queue.
        `container_id`: one that never ran (its start failed) is recorded here."""
        now = self.clock()
        with self.db.begin() as conn:
            cancelled_by = None
            if retry is not None:
                cancelled_by = conn.scalar(
                    select(jobs.c.cancel_requested_by).where(
                        jobs.c.id == claim.job.id, jobs.c.cancel_requested_at.is_not(None)
                    )
                )
            if cancelled_by is not None:
                # A cancel asked for while the attempt ran: it is not retried, whatever it was.
                retry = None
                reason = f"{result.reason}; not retried: cancelled by {cancelled_by}"
                result = replace(result, reason=reason)
            target = _after(result, retry, cancelled=cancelled_by is not None)
            conn.execute(
                update(attempts)
                .where(*_fenced(claim))
                .values(
                    finished_at=now,
                    exit_code=result.exit_code,
                    oom_killed=result.oom_killed,
                    outcome=result.outcome,
                    reason=result.reason,
                    container_id=func.coalesce(attempts.c.container_id, container_id),
                )
            )
            cas(
                conn,
                claim.job.id,
                expected,
                target,
                now=now,
                token=claim.lease_token,
                **_job_values(result, retry if target is JobStatus.QUEUED else None, now),
            )
            message = f"attempt {claim.attempt} {result.outcome}: {result.reason}"
            if retry is not None:
                message += f"; retry in {retry.delay_seconds:.1f}s ({retry.reason})"
            kind = "retry_scheduled" if retry is not None else "finished"
            conn.execute(
                ADD_EVENT,
                event_values(
                    claim.job.id,
                    now,
                    kind,
                    expected,
                    target,
                    claim.agent_id,
                    message,
                    claim.attempt,
                ),
            )
        return target

    def release(self, agent_id: str, job_id: str, attempt: int) -> None:
        """The attempt's container has exited (or is gone): free its memory, CPUs and GPUs."""
        which = {"b_agent": agent_id, "b_job": job_id, "b_attempt": attempt}
        with self.db.begin() as conn:
            conn.execute(_RELEASE, which | {"b_now": self.clock()})
            conn.execute(_DROP_HOLDS, which)

    def unreleased(self, agent_id: str) -> set[tuple[str, int]]:
        """Attempts whose resources this agent still holds in the ledger."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(attempts.c.job_id, attempts.c.number).where(
                    attempts.c.agent_id == agent_id, attempts.c.released_at.is_(None)
                )
            )
            return {(job_id, number) for job_id, number in rows}

    def next_due(self) -> datetime | None:
        """When the earliest delayed retry becomes claimable."""
        with self.db.read() as conn:
            due: datetime | None = conn.scalar(
                select(func.min(jobs.c.not_before)).where(
                    jobs.c.status == JobStatus.QUEUED.value, jobs.c.not_before.is_not(None)
                )
            )
            return due

    def cancel_requested(self, job_ids: Iterable[str]) -> dict[str, str]:
        """Of these jobs, those whose cancellation was asked for, with who asked."""
        ids = list(job_ids)
        if not ids:
            return {}
        with self.db.read() as conn:
            rows = conn.execute(
                select(jobs.c.id, jobs.c.cancel_requested_by).where(
                    jobs.c.id.in_(ids), jobs.c.cancel_requested_at.is_not(None)
                )
            )
            return {job_id: actor or "api" for job_id, actor in rows}

    def active_attempts(self, agent_id: str) -> list[ActiveAttempt]:
        """Attempts this agent holds according to the database."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(*_ACTIVE_COLUMNS)
                .join(attempts, _CURRENT)
                .where(jobs.c.agent_id == agent_id, jobs.c.status.in_(ACTIVE))
            ).mappings()
            return [mapping.active(row) for row in rows]

    def expired(self) -> list[tuple[str, ActiveAttempt]]:
        """Active attempts whose agent stopped renewing their lease: (agent id, attempt)."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(*_ACTIVE_COLUMNS)
                .join(attempts, _CURRENT)
                .where(jobs.c.status.in_(ACTIVE), jobs.c.lease_expires_at < self.clock())
            ).mappings()
            return [(row["agent_id"], mapping.active(row)) for row in rows]

    def note(self, claim: Claim, kind: str, message: str) -> None:
        """An audit event that changes no state (e.g. an agent re-attached after a restart)."""
        with self.db.begin() as conn:
            conn.execute(
                ADD_EVENT,
                event_values(
                    claim.job.id,
                    self.clock(),
                    kind,
                    None,
                    None,
                    claim.agent_id,
                    message,
                    claim.attempt,
                ),
            )

    def renew_leases(
        self, agent_id: str, tokens: Iterable[str], *, lease_seconds: float
    ) -> set[str]:
        """Extend these leases; returns those still held (a missing one was lost)."""
        tokens = list(tokens)
        if not tokens:
            return set()
        with self.db.begin() as conn:
            renewed = conn.scalars(
                update(jobs)
                .where(
                    jobs.c.agent_id == agent_id,
                    jobs.c.lease_token.in_(tokens),
                    jobs.c.status.in_(ACTIVE),
                )
                .values(lease_expires_at=self.clock() + timedelta(seconds=lease_seconds))
                .returning(jobs.c.lease_token)
            )
            return {token for token in renewed if token}


def _fenced(claim: Claim) -> tuple[Any, ...]:
    return (
        attempts.c.job_id == claim.job.id,
        attempts.c.number == claim.attempt,
        attempts.c.lease_token == claim.lease_token,
    )


def _job_values(
    result: AttemptResult, retry: RetryDecision | None, now: datetime
) -> dict[str, Any]:
    """What the job row takes from an attempt's end: its result, no lease, and either the
    retry's due time and budget or its end."""
    values: dict[str, Any] = {
        "outcome": result.outcome,
        "exit_code": result.exit_code,
        "reason": result.reason,
        "lease_token": None,
        "lease_expires_at": None,
    }
    if retry is None:
        values["finished_at"] = now
    else:
        values["not_before"] = now + timedelta(seconds=retry.delay_seconds)
        counter = jobs.c.retries_used if retry.uses_job_budget else jobs.c.infra_retries_used
        values[counter.key] = counter + 1
    return values


def _after(result: AttemptResult, retry: RetryDecision | None, *, cancelled: bool) -> JobStatus:
    """Where a job goes once an attempt has ended."""
    if result.outcome == "succeeded":
        return JobStatus.SUCCEEDED
    if retry is not None:
        return JobStatus.QUEUED
    if result.outcome == "cancelled" or cancelled:
        return JobStatus.CANCELLED
    return JobStatus.FAILED
