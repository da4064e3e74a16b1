"""Every SQL statement about jobs. Status changes are compare-and-set against the expected state."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, exists, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from agent.core.auth import Quota, QuotaExceeded
from agent.core.errors import InvalidTransition, JobNotFound, QueueFull, StaleState
from agent.core.jobs import JobStatus, check_deletable, check_transition
from agent.core.records import (
    ActiveAttempt,
    AgentInfo,
    AttemptResult,
    Claim,
    Event,
    Job,
    NewJob,
    Stats,
)
from agent.core.retry import RetryDecision
from agent.core.scheduling import Capacity, Demand, Free, assign_gpus, pick
from agent.db import mapping
from agent.db.engine import Database
from agent.db.models import AgentRow, AttemptRow, EventRow, GpuHoldRow, JobLabelRow, JobRow
from agent.db.notify import CANCEL_CHANNEL, JOBS_CHANNEL, notify

CLAIM_BATCH = 50
SUBMIT_LOCK_KEY = 0x7472_6169_6E79  # "trainy": serialises the queue-bound check on PostgreSQL
ACTIVE = (JobStatus.STARTING.value, JobStatus.RUNNING.value)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class JobQueue:
    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

    # --- submit and read -----------------------------------------------------------------

    def submit(self, new: NewJob, *, max_queued: int, **options: Any) -> Job:
        """`submit_or_get` for callers that only need the job."""
        return self.submit_or_get(new, max_queued=max_queued, **options)[0]

    def submit_or_get(
        self,
        new: NewJob,
        *,
        max_queued: int,
        actor: str = "api",
        owner: str | None = None,
        idempotency_key: str | None = None,
        quota: Quota | None = None,
    ) -> tuple[Job, bool]:
        """(the new job, True); or, when `owner` already submitted with `idempotency_key`,
        (that first job, False). The queue bound and `owner`'s quota are checked under the
        same lock as the insert, so concurrent submits cannot overshoot them."""
        try:
            return self._submit(new, max_queued, actor, owner, idempotency_key, quota)
        except IntegrityError:
            # Submits are serialised, so the key was checked before the insert; the unique
            # constraint on (owner, idempotency_key) is what makes a second job impossible.
            first = self.find_keyed(owner, idempotency_key) if idempotency_key else None
            if first is None:
                raise
            return first, False

    def find_keyed(self, owner: str | None, idempotency_key: str) -> Job | None:
        """The job `owner` submitted with this idempotency key, if any."""
        with self.db.reading() as s:
            row = s.scalars(
                select(JobRow).where(
                    JobRow.owner == owner, JobRow.idempotency_key == idempotency_key
                )
            ).first()
            return None if row is None else self._with_attempts(s, row)

    def _submit(
        self,
        new: NewJob,
        max_queued: int,
        actor: str,
        owner: str | None,
        idempotency_key: str | None,
        quota: Quota | None,
    ) -> tuple[Job, bool]:
        now = self.clock()
        with self.db.transaction() as s:
            if not self.db.is_sqlite:  # SQLite's BEGIN IMMEDIATE already serialises writers
                s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SUBMIT_LOCK_KEY})
            if idempotency_key is not None:
                first = s.scalars(
                    select(JobRow).where(
                        JobRow.owner == owner, JobRow.idempotency_key == idempotency_key
                    )
                ).first()
                if first is not None:
                    return self._with_attempts(s, first), False
            queued = s.scalar(
                select(func.count()).select_from(JobRow).where(JobRow.status == "queued")
            )
            if (queued or 0) >= max_queued:
                raise QueueFull(
                    f"the queue is full: {queued} jobs are queued and the bound is {max_queued} "
                    "(TRAINYARD_MAX_QUEUED); try again when some have started"
                )
            if quota is not None and owner is not None:
                refusal = self._quota_refusal(s, quota, owner, new.gpus)
                if refusal is not None:
                    raise QuotaExceeded(refusal)
            row = JobRow(
                **mapping.new_job_values(new),
                owner=owner,
                idempotency_key=idempotency_key,
                id=new_id(),
                status=JobStatus.QUEUED.value,
                attempt_count=0,
                retries_used=0,
                infra_retries_used=0,
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            s.flush()  # the job row first: events and labels reference it
            s.add_all(JobLabelRow(job_id=row.id, key=k, value=v) for k, v in new.labels.items())
            _event(s, row.id, now, "submitted", None, JobStatus.QUEUED, actor, "job submitted")
            notify(s, JOBS_CHANNEL, row.id)
            return mapping.job(row, []), True

    def _quota_refusal(self, s: Session, quota: Quota, owner: str, gpus: int) -> str | None:
        queued = s.scalar(
            select(func.count())
            .select_from(JobRow)
            .where(JobRow.owner == owner, JobRow.status == JobStatus.QUEUED.value)
        )
        running_gpus: int | None = 0
        if quota.max_gpus is not None and gpus > 0:
            running_gpus = s.scalar(
                select(func.coalesce(func.sum(JobRow.gpus), 0)).where(
                    JobRow.owner == owner, JobRow.status.in_(ACTIVE)
                )
            )
        return quota.refusal(
            owner, queued=int(queued or 0), running_gpus=int(running_gpus or 0), gpus=gpus
        )

    def get(self, job_id: str, *, owner: str | None = None) -> Job:
        """The job with its attempts. With `owner`, another owner's job is not found either
        (the same 404 as an unknown id: ids do not leak)."""
        with self.db.reading() as s:
            return self._with_attempts(s, _visible_row(s, job_id, owner))

    def _with_attempts(self, s: Session, row: JobRow) -> Job:
        attempts = s.scalars(
            select(AttemptRow).where(AttemptRow.job_id == row.id).order_by(AttemptRow.number)
        ).all()
        return mapping.job(row, attempts)

    def owner_of(self, job_id: str) -> str | None:
        with self.db.reading() as s:
            return s.scalar(select(JobRow.owner).where(JobRow.id == job_id))

    def owned(self, job_ids: Iterable[str], owner: str) -> set[str]:
        """Of these jobs, those `owner` owns."""
        ids = list(job_ids)
        if not ids:
            return set()
        with self.db.reading() as s:
            return set(
                s.scalars(select(JobRow.id).where(JobRow.id.in_(ids), JobRow.owner == owner))
            )

    def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        limit: int = 50,
        offset: int = 0,
        owner: str | None = None,
        labels: Mapping[str, str] | None = None,
        name_prefix: str | None = None,
    ) -> tuple[list[Job], int]:
        """Newest first; only `owner`'s jobs when given, only those carrying every one of
        `labels`, only those whose name starts with `name_prefix`."""
        where: list[ColumnElement[bool]] = []
        if status is not None:
            where.append(JobRow.status == status.value)
        if owner is not None:
            where.append(JobRow.owner == owner)
        if name_prefix:
            where.append(JobRow.name.startswith(name_prefix, autoescape=True))
        for key, value in (labels or {}).items():
            where.append(
                exists().where(
                    JobLabelRow.job_id == JobRow.id,
                    JobLabelRow.key == key,
                    JobLabelRow.value == value,
                )
            )
        with self.db.reading() as s:
            total = s.scalar(select(func.count()).select_from(JobRow).where(*where)) or 0
            rows = s.scalars(
                select(JobRow)
                .where(*where)
                .order_by(JobRow.created_at.desc(), JobRow.id.desc())
                .limit(limit)
                .offset(offset)
            ).all()
            return [mapping.job(row, []) for row in rows], total

    def delete(self, job_id: str, *, owner: str | None = None) -> None:
        """Remove a finished job; its attempts, events, labels and metrics go with it (every
        child table's foreign key is ON DELETE CASCADE, and SQLite connections enforce foreign
        keys). The caller removes its files. JobNotFound, or InvalidTransition (409) while it
        is not final."""
        with self.db.transaction() as s:
            row = _visible_row(s, job_id, owner)
            check_deletable(job_id, JobStatus(row.status))
            s.execute(delete(JobRow).where(JobRow.id == job_id))

    def events(self, job_id: str, *, owner: str | None = None) -> list[Event]:
        with self.db.reading() as s:
            _visible_row(s, job_id, owner)
            rows = s.scalars(
                select(EventRow).where(EventRow.job_id == job_id).order_by(EventRow.id)
            ).all()
            return [mapping.event(r) for r in rows]

    def stats(self) -> Stats:
        with self.db.reading() as s:
            counts = {status.value: 0 for status in JobStatus}
            for status, count in s.execute(
                select(JobRow.status, func.count()).group_by(JobRow.status)
            ):
                counts[status] = count
            epoch = self._epoch
            wait = s.scalar(
                select(func.avg(epoch(JobRow.started_at) - epoch(JobRow.created_at))).where(
                    JobRow.started_at.is_not(None)
                )
            )
            run = s.scalar(
                select(func.avg(epoch(JobRow.finished_at) - epoch(JobRow.started_at))).where(
                    JobRow.finished_at.is_not(None), JobRow.started_at.is_not(None)
                )
            )
        decided = counts["succeeded"] + counts["failed"]
        return Stats(
            counts=counts,
            total=sum(counts.values()),
            success_rate=counts["succeeded"] / decided if decided else None,
            mean_queue_wait_seconds=float(wait) if wait is not None else None,
            mean_run_seconds=float(run) if run is not None else None,
        )

    def _epoch(self, column: Any) -> Any:
        if self.db.is_sqlite:
            return (func.julianday(column) - 2440587.5) * 86400.0
        return func.extract("epoch", column)

    # --- cancel ----------------------------------------------------------------------------

    def request_cancel(self, job_id: str, actor: str, *, owner: str | None = None) -> Job:
        """Cancel a queued job at once; flag an active one for its agent to stop. With
        `owner`, another owner's job is not found."""
        now = self.clock()
        with self.db.transaction() as s:
            query = select(JobRow).where(JobRow.id == job_id)
            if not self.db.is_sqlite:
                query = query.with_for_update()
            row = s.scalars(query).first()
            if row is None or (owner is not None and row.owner != owner):
                raise JobNotFound(f"job not found: no job has the id {job_id!r}")
            status = JobStatus(row.status)
            if status.is_final:
                raise InvalidTransition(f"job {job_id} already {status.value}; nothing to cancel")
            if status is JobStatus.QUEUED:
                self._cas(
                    s,
                    job_id,
                    JobStatus.QUEUED,
                    JobStatus.CANCELLED,
                    outcome="cancelled",
                    reason=f"cancelled by {actor} before it started",
                    finished_at=now,
                    not_before=None,
                    cancel_requested_at=now,
                    cancel_requested_by=actor,
                )
                _event(s, job_id, now, "cancelled", status, JobStatus.CANCELLED, actor, "cancelled")
            elif row.cancel_requested_at is None:
                s.execute(
                    update(JobRow)
                    .where(JobRow.id == job_id, JobRow.status.in_(ACTIVE))
                    .values(cancel_requested_at=now, cancel_requested_by=actor, updated_at=now)
                )
                notify(s, CANCEL_CHANNEL, job_id)
                _event(
                    s,
                    job_id,
                    now,
                    "cancel_requested",
                    None,
                    None,
                    actor,
                    f"cancel requested by {actor}; stopping attempt {row.attempt_count}",
                    attempt=row.attempt_count,
                )
        return self.get(job_id)

    def cancel_requested(self, job_ids: Iterable[str]) -> dict[str, str]:
        """Of these jobs, those whose cancellation was asked for, with who asked."""
        ids = list(job_ids)
        if not ids:
            return {}
        with self.db.reading() as s:
            rows = s.execute(
                select(JobRow.id, JobRow.cancel_requested_by).where(
                    JobRow.id.in_(ids), JobRow.cancel_requested_at.is_not(None)
                )
            )
            return {job_id: actor or "api" for job_id, actor in rows}

    # --- agent side ------------------------------------------------------------------------

    def claim(
        self,
        agent_id: str,
        capacity: Capacity,
        *,
        lease_seconds: float,
        starvation_seconds: float | None = None,
    ) -> Claim | None:
        """Atomically take the job to start next on this agent, by what the ledger says is free.

        Order is priority, then age; smaller jobs backfill behind a head that does not fit,
        until the head has waited `starvation_seconds`. The job's GPUs go into the ledger in
        the same transaction, whose primary key refuses any device already held.
        """
        now = self.clock()
        with self.db.transaction() as s:
            free = self._free(s, agent_id, capacity)
            if free.slots <= 0:
                return None
            candidates = self._candidates(s, now)
            while True:
                chosen = pick(
                    candidates,
                    free,
                    capacity=capacity.whole,
                    now=now.timestamp(),
                    starvation_seconds=starvation_seconds,
                )
                if chosen is None:
                    return None
                row = self._lock_queued(s, chosen.job_id)
                if row is not None:
                    break
                # Another agent is taking it right now: choose again without it.
                candidates = [c for c in candidates if c.job_id != chosen.job_id]
            return self._take(
                s, row, agent_id, assign_gpus(free.gpu_ids, row.gpus), now, lease_seconds
            )

    def _candidates(self, s: Session, now: datetime) -> list[Demand]:
        """Queued jobs due now, in claim order: light columns, no lock (deciding must not
        block, or be skipped by, other agents)."""
        query = (
            select(
                JobRow.id,
                JobRow.memory_bytes,
                JobRow.cpus,
                JobRow.gpus,
                JobRow.created_at,
                JobRow.not_before,
            )
            .where(
                JobRow.status == JobStatus.QUEUED.value,
                or_(JobRow.not_before.is_(None), JobRow.not_before <= now),
            )
            .order_by(JobRow.priority.desc(), JobRow.created_at, JobRow.id)
            .limit(CLAIM_BATCH)
        )
        return [
            Demand(job_id, memory, cpus, gpus, waiting_since=(not_before or created).timestamp())
            for job_id, memory, cpus, gpus, created, not_before in s.execute(query)
        ]

    def _take(
        self,
        s: Session,
        row: JobRow,
        agent_id: str,
        gpu_ids: tuple[str, ...],
        now: datetime,
        lease_seconds: float,
    ) -> Claim:
        """Claim a locked queued row: its new attempt, its lease and its GPUs in the ledger
        (whose primary key refuses any device already held)."""
        token = new_id()
        number = row.attempt_count + 1
        waiting_since = row.not_before or row.created_at  # the CAS clears not_before
        self._cas(
            s,
            row.id,
            JobStatus.QUEUED,
            JobStatus.STARTING,
            agent_id=agent_id,
            lease_token=token,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempt_count=number,
            not_before=None,
        )
        s.add(
            AttemptRow(
                job_id=row.id,
                number=number,
                agent_id=agent_id,
                lease_token=token,
                gpu_ids=list(gpu_ids),
                memory_bytes=row.memory_bytes,
                cpus=row.cpus,
                claimed_at=now,
            )
        )
        for gpu in gpu_ids:
            s.add(
                GpuHoldRow(
                    agent_id=agent_id, gpu_id=gpu, job_id=row.id, attempt=number, acquired_at=now
                )
            )
        with_gpus = f" with GPUs {','.join(gpu_ids)}" if gpu_ids else ""
        message = f"attempt {number} claimed by agent {agent_id}{with_gpus}"
        _event(
            s,
            row.id,
            now,
            "claimed",
            JobStatus.QUEUED,
            JobStatus.STARTING,
            agent_id,
            message,
            attempt=number,
        )
        s.flush()
        s.refresh(row)
        return Claim(mapping.job(row, []), number, token, gpu_ids, agent_id, waiting_since)

    def _lock_queued(self, s: Session, job_id: str) -> JobRow | None:
        """The job's row, locked for this transaction, if it is still queued and not locked."""
        query = select(JobRow).where(JobRow.id == job_id, JobRow.status == "queued")
        if not self.db.is_sqlite:  # SQLite's BEGIN IMMEDIATE already holds the only write lock
            query = query.with_for_update(skip_locked=True)
        return s.scalars(query).first()

    def _free(self, s: Session, agent_id: str, capacity: Capacity) -> Free:
        count, memory, cpus = s.execute(
            select(
                func.count(),
                func.coalesce(func.sum(AttemptRow.memory_bytes), 0),
                func.coalesce(func.sum(AttemptRow.cpus), 0.0),
            ).where(AttemptRow.agent_id == agent_id, AttemptRow.released_at.is_(None))
        ).one()
        held = set(s.scalars(select(GpuHoldRow.gpu_id).where(GpuHoldRow.agent_id == agent_id)))
        return capacity.remaining(
            count=int(count), memory_bytes=int(memory), cpus=float(cpus), gpus=held
        )

    def release(self, agent_id: str, job_id: str, attempt: int) -> None:
        """The attempt's container is confirmed gone: free its memory, CPUs and GPUs."""
        with self.db.transaction() as s:
            s.execute(
                update(AttemptRow)
                .where(
                    AttemptRow.job_id == job_id,
                    AttemptRow.number == attempt,
                    AttemptRow.agent_id == agent_id,
                    AttemptRow.released_at.is_(None),
                )
                .values(released_at=self.clock())
            )
            s.execute(
                delete(GpuHoldRow).where(
                    GpuHoldRow.agent_id == agent_id,
                    GpuHoldRow.job_id == job_id,
                    GpuHoldRow.attempt == attempt,
                )
            )

    def unreleased(self, agent_id: str) -> set[tuple[str, int]]:
        """Attempts whose resources this agent still holds in the ledger."""
        with self.db.reading() as s:
            rows = s.execute(
                select(AttemptRow.job_id, AttemptRow.number).where(
                    AttemptRow.agent_id == agent_id, AttemptRow.released_at.is_(None)
                )
            )
            return {(job_id, number) for job_id, number in rows}

    def next_due(self) -> datetime | None:
        """When the earliest delayed retry becomes claimable."""
        with self.db.reading() as s:
            return s.scalar(
                select(func.min(JobRow.not_before)).where(
                    JobRow.status == JobStatus.QUEUED.value, JobRow.not_before.is_not(None)
                )
            )

    def record_container(self, claim: Claim, container_id: str) -> None:
        with self.db.transaction() as s:
            result = s.execute(
                update(AttemptRow)
                .where(
                    AttemptRow.job_id == claim.job.id,
                    AttemptRow.number == claim.attempt,
                    AttemptRow.lease_token == claim.lease_token,
                )
                .values(container_id=container_id)
            )
            if _rowcount(result) != 1:
                raise StaleState(
                    f"job {claim.job.id}: lease lost before its container was recorded"
                )

    def mark_running(self, claim: Claim) -> bool:
        """starting → running; False when the job moved on meanwhile (e.g. it was cancelled)."""
        now = self.clock()
        with self.db.transaction() as s:
            moved = self._cas(
                s,
                claim.job.id,
                JobStatus.STARTING,
                JobStatus.RUNNING,
                token=claim.lease_token,
                strict=False,
                started_at=func.coalesce(JobRow.started_at, now),
            )
            if not moved:
                return False
            s.execute(
                update(AttemptRow)
                .where(AttemptRow.job_id == claim.job.id, AttemptRow.number == claim.attempt)
                .values(started_at=now)
            )
            _event(
                s,
                claim.job.id,
                now,
                "started",
                JobStatus.STARTING,
                JobStatus.RUNNING,
                claim.agent_id,
                f"attempt {claim.attempt} running",
                attempt=claim.attempt,
            )
            return True

    def finish(
        self,
        claim: Claim,
        expected: JobStatus,
        result: AttemptResult,
        retry: RetryDecision | None,
    ) -> JobStatus:
        """Store an attempt's result and move the job on: final state, or back to the queue."""
        now = self.clock()
        cancelled_by = self._cancel_requested_by(claim.job.id) if retry is not None else None
        if cancelled_by is not None:
            # A cancel asked for while the attempt ran: it is not retried, whatever it was.
            retry = None
            reason = f"{result.reason}; not retried: cancelled by {cancelled_by}"
            result = replace(result, reason=reason)
        target = _after(result, retry, cancelled=cancelled_by is not None)
        values: dict[str, Any] = {
            "outcome": result.outcome,
            "exit_code": result.exit_code,
            "reason": result.reason,
            "lease_token": None,
            "lease_expires_at": None,
        }
        if target is JobStatus.QUEUED:
            assert retry is not None
            values["not_before"] = now + timedelta(seconds=retry.delay_seconds)
            counter = JobRow.retries_used if retry.uses_job_budget else JobRow.infra_retries_used
            values[counter.key] = counter + 1
        else:
            values["finished_at"] = now
        with self.db.transaction() as s:
            agent_id = claim.agent_id
            s.execute(
                update(AttemptRow)
                .where(
                    AttemptRow.job_id == claim.job.id,
                    AttemptRow.number == claim.attempt,
                    AttemptRow.lease_token == claim.lease_token,
                )
                .values(
                    finished_at=now,
                    exit_code=result.exit_code,
                    oom_killed=result.oom_killed,
                    outcome=result.outcome,
                    reason=result.reason,
                )
            )
            self._cas(s, claim.job.id, expected, target, token=claim.lease_token, **values)
            message = f"attempt {claim.attempt} {result.outcome}: {result.reason}"
            if retry is not None:
                message += f"; retry in {retry.delay_seconds:.1f}s ({retry.reason})"
            kind = "retry_scheduled" if retry is not None else "finished"
            _event(s, claim.job.id, now, kind, expected, target, agent_id, message, claim.attempt)
        return target

    def _cancel_requested_by(self, job_id: str) -> str | None:
        with self.db.reading() as s:
            return s.scalar(
                select(JobRow.cancel_requested_by).where(
                    JobRow.id == job_id, JobRow.cancel_requested_at.is_not(None)
                )
            )

    def active_attempts(self, agent_id: str) -> list[ActiveAttempt]:
        """Attempts this agent holds according to the database."""
        with self.db.reading() as s:
            rows = s.execute(
                select(JobRow, AttemptRow)
                .join(
                    AttemptRow,
                    (AttemptRow.job_id == JobRow.id) & (AttemptRow.number == JobRow.attempt_count),
                )
                .where(JobRow.agent_id == agent_id, JobRow.status.in_(ACTIVE))
            ).all()
            return [mapping.active(job, att) for job, att in rows]

    def note(self, claim: Claim, kind: str, message: str) -> None:
        """An audit event that changes no state (e.g. an agent re-attached after a restart)."""
        with self.db.transaction() as s:
            _event(
                s,
                claim.job.id,
                self.clock(),
                kind,
                None,
                None,
                claim.agent_id,
                message,
                claim.attempt,
            )

    def renew_leases(
        self, agent_id: str, tokens: Iterable[str], *, lease_seconds: float
    ) -> set[str]:
        """Extend these leases; returns those still held (a missing one was lost)."""
        tokens = list(tokens)
        if not tokens:
            return set()
        with self.db.transaction() as s:
            renewed = s.scalars(
                update(JobRow)
                .where(
                    JobRow.agent_id == agent_id,
                    JobRow.lease_token.in_(tokens),
                    JobRow.status.in_(ACTIVE),
                )
                .values(lease_expires_at=self.clock() + timedelta(seconds=lease_seconds))
                .returning(JobRow.lease_token)
            )
            return {token for token in renewed if token}

    def expired(self) -> list[tuple[str, ActiveAttempt]]:
        """Active attempts whose agent stopped renewing their lease: (agent id, attempt)."""
        with self.db.reading() as s:
            rows = s.execute(
                select(JobRow, AttemptRow)
                .join(
                    AttemptRow,
                    (AttemptRow.job_id == JobRow.id) & (AttemptRow.number == JobRow.attempt_count),
                )
                .where(JobRow.status.in_(ACTIVE), JobRow.lease_expires_at < self.clock())
            ).all()
            return [(att.agent_id, mapping.active(job, att)) for job, att in rows]

    # --- agents ------------------------------------------------------------------------------

    def register_agent(
        self, agent_id: str, hostname: str, capacity: Capacity, *, endpoint: str | None = None
    ) -> None:
        now = self.clock()
        with self.db.transaction() as s:
            row = s.get(AgentRow, agent_id)
            if row is None:
                row = AgentRow(id=agent_id)
                s.add(row)
            row.hostname = hostname
            row.started_at = now
            row.heartbeat_at = now
            row.stopped_at = None
            row.slots = capacity.slots
            row.memory_bytes = capacity.memory_bytes
            row.cpus = capacity.cpus
            row.gpu_ids = list(capacity.gpu_ids)
            row.engine_error = None
            row.endpoint = endpoint

    def heartbeat(
        self, agent_id: str, *, engine_error: str | None, engine_version: str | None = None
    ) -> None:
        values: dict[str, Any] = {
            "heartbeat_at": self.clock(),
            "engine_error": engine_error,
            "stopped_at": None,
        }
        if engine_version is not None:
            values["engine_version"] = engine_version
        with self.db.transaction() as s:
            s.execute(update(AgentRow).where(AgentRow.id == agent_id).values(**values))

    def agent_stopped(self, agent_id: str) -> None:
        with self.db.transaction() as s:
            s.execute(
                update(AgentRow).where(AgentRow.id == agent_id).values(stopped_at=self.clock())
            )

    def agent_endpoint(self, agent_id: str) -> str | None:
        """Where an agent serves its jobs' files (one row, no ledger sums)."""
        with self.db.reading() as s:
            return s.scalar(select(AgentRow.endpoint).where(AgentRow.id == agent_id))

    def agents(self) -> list[AgentInfo]:
        with self.db.reading() as s:
            held = {
                agent: (int(count), int(memory), float(cpus))
                for agent, count, memory, cpus in s.execute(
                    select(
                        AttemptRow.agent_id,
                        func.count(),
                        func.coalesce(func.sum(AttemptRow.memory_bytes), 0),
                        func.coalesce(func.sum(AttemptRow.cpus), 0.0),
                    )
                    .where(AttemptRow.released_at.is_(None))
                    .group_by(AttemptRow.agent_id)
                )
            }
            holders: dict[str, dict[str, str]] = {}
            for hold in s.scalars(select(GpuHoldRow)):
                holders.setdefault(hold.agent_id, {})[hold.gpu_id] = hold.job_id
            return [
                mapping.agent(
                    row,
                    running=held.get(row.id, (0, 0, 0.0))[0],
                    held_memory_bytes=held.get(row.id, (0, 0, 0.0))[1],
                    held_cpus=held.get(row.id, (0, 0, 0.0))[2],
                    gpu_holders=holders.get(row.id, {}),
                )
                for row in s.scalars(select(AgentRow).order_by(AgentRow.id))
            ]

    # --- helpers ---------------------------------------------------------------------------

    def _cas(
        self,
        s: Session,
        job_id: str,
        expected: JobStatus,
        target: JobStatus,
        *,
        token: str | None = None,
        strict: bool = True,
        **values: Any,
    ) -> bool:
        check_transition(expected, target)
        conditions = [JobRow.id == job_id, JobRow.status == expected.value]
        if token is not None:
            conditions.append(JobRow.lease_token == token)
        result = s.execute(
            update(JobRow)
            .where(*conditions)
            .values(status=target.value, updated_at=self.clock(), **values)
            .execution_options(synchronize_session=False)  # callers re-read what they need
        )
        if _rowcount(result) == 1:
            return True
        if strict:
            raise StaleState(
                f"job {job_id} was no longer {expected.value} (or its lease moved on); "
                f"not moving it to {target.value}"
            )
        return False


def _after(result: AttemptResult, retry: RetryDecision | None, *, cancelled: bool) -> JobStatus:
    """Where a job goes once an attempt has ended."""
    if result.outcome == "succeeded":
        return JobStatus.SUCCEEDED
    if retry is not None:
        return JobStatus.QUEUED
    if result.outcome == "cancelled" or cancelled:
        return JobStatus.CANCELLED
    return JobStatus.FAILED


def _visible_row(s: Session, job_id: str, owner: str | None) -> JobRow:
    row = s.get(JobRow, job_id)
    if row is None or (owner is not None and row.owner != owner):
        raise JobNotFound(f"job not found: no job has the id {job_id!r}")
    return row


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


def _event(
    s: Session,
    job_id: str,
    at: datetime,
    kind: str,
    from_status: JobStatus | None,
    to_status: JobStatus | None,
    actor: str,
    message: str,
    attempt: int | None = None,
) -> None:
    s.add(
        EventRow(
            job_id=job_id,
            at=at,
            kind=kind,
            from_status=from_status.value if from_status else None,
            to_status=to_status.value if to_status else None,
            attempt=attempt,
            actor=actor,
            message=message,
        )
    )
