"""Jobs as users see them: submit (group-committed), get, list, stats, cancel, delete."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, exists, func, insert, or_, select, text
from sqlalchemy.exc import IntegrityError

from agent.core.admission import live_agents, unschedulable_reason
from agent.core.auth import (
    NOT_A_VALID_TOKEN,
    SEND_AUTHORIZATION,
    InvalidToken,
    Quota,
    QuotaExceeded,
)
from agent.core.errors import InvalidJobSpec, InvalidTransition, JobNotFound, QueueFull
from agent.core.jobs import JobStatus, check_deletable
from agent.core.records import AgentInfo, Event, Job, NewJob, Stats
from agent.db import mapping
from agent.db.agents import offers
from agent.db.engine import Database
from agent.db.groupcommit import GroupCommit
from agent.db.models import attempts, events, job_labels, jobs
from agent.db.notify import CANCEL_CHANNEL, JOBS_CHANNEL, notify
from agent.db.tokens import ANY_TOKEN, active_ids
from agent.db.transitions import ACTIVE, ADD_EVENT, cas, event_values

log = logging.getLogger("trainyard.db")

SUBMIT_LOCK_KEY = 0x7472_6169_6E79  # "trainy": serialises the queue-bound check on PostgreSQL
QUEUED = JobStatus.QUEUED.value
# What a job row holds before anything has happened to it.
UNTOUCHED: dict[str, Any] = {
    "status": QUEUED,
    "attempt_count": 0,
    "retries_used": 0,
    "infra_retries_used": 0,
}
NOT_YET: dict[str, Any] = dict.fromkeys(
    (
        "reason",
        "outcome",
        "exit_code",
        "not_before",
        "started_at",
        "finished_at",
        "agent_id",
        "cancel_requested_at",
        "cancel_requested_by",
    )
)


# Built once: a prebuilt statement skips building it and working out its cache key.
_COUNT_QUEUED = select(func.count()).where(jobs.c.status == QUEUED)
_ADD_JOBS = insert(jobs)
_ADD_LABELS = insert(job_labels)
_ANALYZE_JOBS = text("ANALYZE jobs")


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Submit:
    """One submit waiting for its group commit."""

    new: NewJob
    max_queued: int
    actor: str
    owner: str | None
    idempotency_key: str | None
    quota: Quota | None
    heartbeat_seconds: float | None = None
    """Refuse a job no live agent could ever run (agents are live within 3 such beats)."""
    single_user: bool = False
    """Sent without a token, as single-user mode's local user: refused while any token exists."""
    token_id: str | None = None
    """Sent with this token, not yet checked: refused unless it is still active."""


@dataclass
class _Owner:
    """An owner's quota counts within one batch."""

    queued: int
    running_gpus: int


ANALYZE_FLOOR = 1_000
"""Queued jobs below which a stale estimate costs little: sorting them all takes ~1 ms."""


class QueueGrowth:
    """When PostgreSQL's statistics of `jobs` need refreshing: after a burst of submits (a
    sweep). Planned from statistics that counted few queued jobs, a claim reads and sorts every
    queued job instead of walking the claim index to the first (5 ms a claim at 5,000 queued,
    0.9 ms once analysed), and autovacuum may take a minute or more to notice. Pure: it sees
    each batch's queue depth and says when to ANALYZE, at most once per doubling from the
    smallest depth seen since the last one."""

    def __init__(self, floor: int = ANALYZE_FLOOR) -> None:
        self.floor = floor
        self.low = 0  # the shallowest queue seen since the last ANALYZE (0: never analysed)

    def needs_analyze(self, queued: int) -> bool:
        self.low = min(self.low, queued)
        if queued < max(self.floor, 2 * self.low):
            return False
        self.low = queued
        return True


class JobStore:
    db: Database
    clock: Callable[[], datetime]

    def __init__(self) -> None:
        self._submits: GroupCommit[Submit, tuple[Job, bool]] = GroupCommit(self._write_submits)
        self._growth = QueueGrowth()
        self._analyzing = threading.Lock()

    # --- submit ----------------------------------------------------------------------------

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
        heartbeat_seconds: float | None = None,
        single_user: bool = False,
        token_id: str | None = None,
    ) -> tuple[Job, bool]:
        """(the new job, True); or, when `owner` already submitted with `idempotency_key`,
        (that first job, False). The queue bound and `owner`'s quota are checked under the
        same lock as the insert, so concurrent submits cannot overshoot them. With
        `heartbeat_seconds`, a job that no live agent could ever run is refused
        (InvalidJobSpec). `single_user`: refused (InvalidToken) if any API token exists;
        `token_id`: refused unless that token is active. Concurrent submits share one
        transaction (group commit), and one read of the agents and of the tokens; each returns
        once it is committed."""
        return self._submits(
            Submit(
                new,
                max_queued,
                actor,
                owner,
                idempotency_key,
                quota,
                heartbeat_seconds,
                single_user,
                token_id,
            )
        )

    def enqueue(self, submit: Submit) -> tuple[Job, bool]:
        """`submit_or_get` of a prepared Submit."""
        return self._submits(submit)

    async def enqueue_async(self, submit: Submit) -> tuple[Job, bool]:
        """`enqueue` from an event loop: no worker thread waits for the group commit."""
        return await self._submits.call_async(submit)

    def _write_submits(self, batch: Sequence[Submit]) -> list[tuple[Job, bool] | BaseException]:
        try:
            return self._insert_batch(batch)
        except IntegrityError as exc:
            if len(batch) > 1:  # write each alone, so that only the one that clashed sees it
                return [self._write_submits([one])[0] for one in batch]
            # Another process inserted the same (owner, idempotency key) first: the unique
            # constraint is what makes a second job impossible; hand back the first one.
            one = batch[0]
            key = one.idempotency_key
            first = self.find_keyed(one.owner, key) if key is not None else None
            return [exc if first is None else (first, False)]

    def _insert_batch(self, batch: Sequence[Submit]) -> list[tuple[Job, bool] | BaseException]:
        now = self.clock()
        outcomes: list[tuple[Job, bool] | BaseException] = []
        rows: list[dict[str, Any]] = []
        labels: list[dict[str, Any]] = []
        keyed: dict[tuple[str | None, str], Job] = {}
        owners: dict[str, _Owner] = {}
        live: list[AgentInfo] | None = None
        tokens_exist: bool | None = None
        active: set[str] | None = None
        with self.db.begin(durable=True) as conn:
            if not self.db.is_sqlite:  # SQLite's BEGIN IMMEDIATE already serialises writers
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SUBMIT_LOCK_KEY})
            queued = conn.scalar(_COUNT_QUEUED) or 0
            for one in batch:
                if one.single_user:
                    if tokens_exist is None:  # once per batch
                        tokens_exist = conn.scalar(ANY_TOKEN) is not None
                    if tokens_exist:
                        outcomes.append(InvalidToken(SEND_AUTHORIZATION))
                        continue
                if one.token_id is not None:
                    if active is None:  # once per batch, for all its tokens
                        active = active_ids(conn, {o.token_id for o in batch if o.token_id})
                    if one.token_id not in active:
                        outcomes.append(InvalidToken(NOT_A_VALID_TOKEN))
                        continue
                key = (one.owner, one.idempotency_key) if one.idempotency_key else None
                first = None
                if key is not None:
                    first = keyed.get(key) or _keyed(conn, *key)
                if first is not None:
                    outcomes.append((first, False))
                    continue
                if one.heartbeat_seconds is not None:
                    if live is None:  # once per batch
                        live = live_agents(
                            offers(conn), now=now, heartbeat_seconds=one.heartbeat_seconds
                        )
                    reason = unschedulable_reason(
                        one.new.memory_bytes, one.new.cpus, one.new.gpus, live
                    )
                    if reason is not None:
                        outcomes.append(InvalidJobSpec(reason))
                        continue
                refusal = _refusal(conn, one, queued, owners)
                if refusal is not None:
                    outcomes.append(refusal)
                    continue
                row = {
                    **mapping.new_job_values(one.new),
                    **UNTOUCHED,
                    "id": new_id(),
                    "owner": one.owner,
                    "idempotency_key": one.idempotency_key,
                    "created_at": now,
                    "updated_at": now,
                }
                rows.append(row)
                labels += [
                    {"job_id": row["id"], "key": k, "value": v} for k, v in one.new.labels.items()
                ]
                job = mapping.job({**row, **NOT_YET})
                outcomes.append((job, True))
                queued += 1
                if key is not None:
                    keyed[key] = job
                if one.owner in owners:
                    owners[one.owner].queued += 1
            if rows:
                conn.execute(_ADD_JOBS, rows)
                if labels:
                    conn.execute(_ADD_LABELS, labels)
                conn.execute(
                    ADD_EVENT,
                    [
                        event_values(
                            row["id"],
                            now,
                            "submitted",
                            None,
                            JobStatus.QUEUED,
                            one.actor,
                            "job submitted",
                        )
                        for row, one in zip(rows, _accepted(batch, outcomes), strict=True)
                    ],
                )
                notify(conn, JOBS_CHANNEL, rows[-1]["id"])
        if not self.db.is_sqlite and self._growth.needs_analyze(queued):
            self._analyze_soon()
        return outcomes

    def _analyze_soon(self) -> None:
        """ANALYZE jobs in a thread of its own: no submit waits for it; one at a time."""
        if not self._analyzing.acquire(blocking=False):
            return

        def analyze() -> None:
            try:
                with self.db.autocommit() as conn:
                    conn.execute(_ANALYZE_JOBS)
            except Exception as exc:  # statistics are an optimisation: never fail for them
                log.warning("ANALYZE jobs failed: %s", exc)
            finally:
                self._analyzing.release()

        threading.Thread(target=analyze, name="trainyard-analyze", daemon=True).start()

    def find_keyed(self, owner: str | None, idempotency_key: str) -> Job | None:
        """The job `owner` submitted with this idempotency key, if any."""
        with self.db.read() as conn:
            return _keyed(conn, owner, idempotency_key)

    # --- read ------------------------------------------------------------------------------

    def get(self, job_id: str, *, owner: str | None = None) -> Job:
        """The job with its attempts. With `owner`, another owner's job is not found either
        (the same 404 as an unknown id: ids do not leak)."""
        with self.db.read() as conn:
            return _with_attempts(conn, _visible(conn, job_id, owner))

    def owner_of(self, job_id: str) -> str | None:
        with self.db.read() as conn:
            return conn.scalar(select(jobs.c.owner).where(jobs.c.id == job_id))

    def owned(self, job_ids: Iterable[str], owner: str) -> set[str]:
        """Of these jobs, those `owner` owns."""
        ids = list(job_ids)
        if not ids:
            return set()
        with self.db.read() as conn:
            return set(
                conn.scalars(select(jobs.c.id).where(jobs.c.id.in_(ids), jobs.c.owner == owner))
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
            where.append(jobs.c.status == status.value)
        if owner is not None:
            where.append(jobs.c.owner == owner)
        if name_prefix:
            where.append(jobs.c.name.startswith(name_prefix, autoescape=True))
        for key, value in (labels or {}).items():
            where.append(
                exists().where(
                    job_labels.c.job_id == jobs.c.id,
                    job_labels.c.key == key,
                    job_labels.c.value == value,
                )
            )
        with self.db.read() as conn:
            total = conn.scalar(select(func.count()).select_from(jobs).where(*where)) or 0
            rows = conn.execute(
                select(jobs)
                .where(*where)
                .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
                .limit(limit)
                .offset(offset)
            ).mappings()
            return [mapping.job(row) for row in rows], total

    def events(self, job_id: str, *, owner: str | None = None) -> list[Event]:
        with self.db.read() as conn:
            _visible(conn, job_id, owner)
            rows = conn.execute(
                select(events).where(events.c.job_id == job_id).order_by(events.c.id)
            ).mappings()
            return [mapping.event(r) for r in rows]

    def stats(self) -> Stats:
        with self.db.read() as conn:
            counts = {status.value: 0 for status in JobStatus}
            for status, count in conn.execute(
                select(jobs.c.status, func.count()).group_by(jobs.c.status)
            ):
                counts[status] = count
            epoch = self._epoch
            wait = conn.scalar(
                select(func.avg(epoch(jobs.c.started_at) - epoch(jobs.c.created_at))).where(
                    jobs.c.started_at.is_not(None)
                )
            )
            run = conn.scalar(
                select(func.avg(epoch(jobs.c.finished_at) - epoch(jobs.c.started_at))).where(
                    jobs.c.finished_at.is_not(None), jobs.c.started_at.is_not(None)
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

    # --- change ----------------------------------------------------------------------------

    def delete(self, job_id: str, *, owner: str | None = None) -> None:
        """Remove a finished job; its attempts, events, labels and metrics go with it (every
        child table's foreign key is ON DELETE CASCADE, and SQLite connections enforce foreign
        keys). The caller removes its files. JobNotFound, or InvalidTransition (409) while it
        is not final."""
        with self.db.begin(durable=True) as conn:
            row = _visible(conn, job_id, owner)
            check_deletable(job_id, JobStatus(row["status"]))
            conn.execute(delete(jobs).where(jobs.c.id == job_id))

    def request_cancel(self, job_id: str, actor: str, *, owner: str | None = None) -> Job:
        """Cancel a queued job at once; flag an active one for its agent to stop. With
        `owner`, another owner's job is not found."""
        now = self.clock()
        with self.db.begin(durable=True) as conn:
            query = select(
                jobs.c.status, jobs.c.owner, jobs.c.cancel_requested_at, jobs.c.attempt_count
            )
            query = query.where(jobs.c.id == job_id)
            if not self.db.is_sqlite:
                query = query.with_for_update()
            row = conn.execute(query).first()
            if row is None or (owner is not None and row.owner != owner):
                raise JobNotFound(f"job not found: no job has the id {job_id!r}")
            status = JobStatus(row.status)
            if status.is_final:
                raise InvalidTransition(f"job {job_id} already {status.value}; nothing to cancel")
            if status is JobStatus.QUEUED:
                cas(
                    conn,
                    job_id,
                    JobStatus.QUEUED,
                    JobStatus.CANCELLED,
                    now=now,
                    outcome="cancelled",
                    reason=f"cancelled by {actor} before it started",
                    finished_at=now,
                    not_before=None,
                    cancel_requested_at=now,
                    cancel_requested_by=actor,
                )
                conn.execute(
                    ADD_EVENT,
                    event_values(
                        job_id, now, "cancelled", status, JobStatus.CANCELLED, actor, "cancelled"
                    ),
                )
            elif row.cancel_requested_at is None:
                conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id, jobs.c.status.in_(ACTIVE))
                    .values(cancel_requested_at=now, cancel_requested_by=actor, updated_at=now)
                )
                notify(conn, CANCEL_CHANNEL, job_id)
                conn.execute(
                    ADD_EVENT,
                    event_values(
                        job_id,
                        now,
                        "cancel_requested",
                        None,
                        None,
                        actor,
                        f"cancel requested by {actor}; stopping attempt {row.attempt_count}",
                        attempt=row.attempt_count,
                    ),
                )
        return self.get(job_id)


def _accepted(batch: Sequence[Submit], outcomes: Sequence[object]) -> list[Submit]:
    """The submits of a batch that became new jobs, in order."""
    return [
        one
        for one, outcome in zip(batch, outcomes, strict=True)
        if isinstance(outcome, tuple) and outcome[1]
    ]


def _refusal(
    conn: Connection, one: Submit, queued: int, owners: dict[str, _Owner]
) -> BaseException | None:
    """Why this submit may not be queued now (the bound, then its owner's quota), or None."""
    if queued >= one.max_queued:
        return QueueFull(
            f"the queue is full: {queued} jobs are queued and the bound is {one.max_queued} "
            "(TRAINYARD_MAX_QUEUED); try again when some have started"
        )
    if one.quota is None or one.owner is None:
        return None
    counts = owners.get(one.owner)
    if counts is None:
        counts = owners[one.owner] = _owner_counts(conn, one.owner)
    refusal = one.quota.refusal(
        one.owner, queued=counts.queued, running_gpus=counts.running_gpus, gpus=one.new.gpus
    )
    return None if refusal is None else QuotaExceeded(refusal)


def _owner_counts(conn: Connection, owner: str) -> _Owner:
    queued, running_gpus = conn.execute(
        select(
            func.count().filter(jobs.c.status == QUEUED),
            func.coalesce(func.sum(jobs.c.gpus).filter(jobs.c.status.in_(ACTIVE)), 0),
        ).where(jobs.c.owner == owner, or_(jobs.c.status == QUEUED, jobs.c.status.in_(ACTIVE)))
    ).one()
    return _Owner(int(queued or 0), int(running_gpus or 0))


def _keyed(conn: Connection, owner: str | None, idempotency_key: str) -> Job | None:
    row = (
        conn.execute(
            select(jobs).where(jobs.c.owner == owner, jobs.c.idempotency_key == idempotency_key)
        )
        .mappings()
        .first()
    )
    return None if row is None else _with_attempts(conn, row)


def _visible(conn: Connection, job_id: str, owner: str | None) -> Mapping[Any, Any]:
    row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
    if row is None or (owner is not None and row["owner"] != owner):
        raise JobNotFound(f"job not found: no job has the id {job_id!r}")
    return row


def _with_attempts(conn: Connection, row: Mapping[Any, Any]) -> Job:
    rows = conn.execute(
        select(attempts).where(attempts.c.job_id == row["id"]).order_by(attempts.c.number)
    ).mappings()
    return mapping.job(row, rows)
