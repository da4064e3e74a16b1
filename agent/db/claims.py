"""Claims: an agent takes the next queued job that fits what its ledger says is free.

The choice is `agent.core.scheduling.pick`'s, written as SQL so that one statement picks, locks
and updates the row. Order is priority, then age; a smaller job backfills behind a head that
does not fit until the head has waited `starvation_seconds`.

- PostgreSQL: a single statement, in autocommit, one round trip: the ledger sums, the pick
  (`FOR UPDATE SKIP LOCKED`, so agents never wait on each other's candidate), the update, the
  attempt row, the GPU holds and the event, all as data-modifying CTEs.
- SQLite: the same steps as a few statements inside one short `BEGIN IMMEDIATE` (SQLite has one
  writer at a time, so nothing can take the row between the pick and the update).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    String,
    and_,
    bindparam,
    column,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from agent.core.jobs import JobStatus
from agent.core.records import Claim, Job
from agent.core.scheduling import Capacity, Free, assign_gpus
from agent.db import mapping
from agent.db.engine import Database
from agent.db.models import UTCDateTime, attempts, gpu_holds, jobs
from agent.db.transitions import ADD_EVENT, event_values

QUEUED = JobStatus.QUEUED.value
STARTING = JobStatus.STARTING.value
CPU_SLACK = 1e-9  # as `Free.fits`: 0.1 + 0.2 CPUs still fit in 0.3
CLAIM_ORDER = (jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id)


class Claims:
    db: Database
    clock: Callable[[], datetime]

    def claim(
        self,
        agent_id: str,
        capacity: Capacity,
        *,
        lease_seconds: float,
        starvation_seconds: float | None = None,
    ) -> Claim | None:
        """Atomically take the job to start next on this agent, by what the ledger says is
        free. The job's GPUs go into the ledger in the same transaction, whose primary key
        refuses any device already held."""
        now = self.clock()
        token = uuid.uuid4().hex
        if self.db.is_sqlite:
            return self._claim_sqlite(
                agent_id, capacity, now, token, lease_seconds, starvation_seconds
            )
        return self._claim_postgres(
            agent_id, capacity, now, token, lease_seconds, starvation_seconds
        )

    def peek(self, capacity: Capacity, exclude: Collection[str] = ()) -> Job | None:
        """The due head of the queue among jobs that could ever run on this agent, bar
        `exclude`: the job its next claim most likely takes, read without locking or holding
        anything (the agent creates that job's container ahead; the claim decides)."""
        params = {
            "now": self.clock(),
            "memory": capacity.memory_bytes,
            "cpus": capacity.cpus + CPU_SLACK,
            "gpus": len(capacity.gpu_ids),
            "exclude": list(exclude),
        }
        with self.db.read() as conn:
            row = conn.execute(_PEEK, params).mappings().first()
        return None if row is None else mapping.job(row)

    # --- SQLite ----------------------------------------------------------------------------

    def _claim_sqlite(
        self,
        agent_id: str,
        capacity: Capacity,
        now: datetime,
        token: str,
        lease_seconds: float,
        starvation_seconds: float | None,
    ) -> Claim | None:
        with self.db.begin() as conn:
            free = _free(conn, agent_id, capacity)
            if free.slots <= 0:
                return None
            params: dict[str, Any] = {
                "now": now,
                "free_memory": free.memory_bytes,
                "free_cpus": free.cpus + CPU_SLACK,
                "free_gpus": len(free.gpu_ids),
            }
            pick = _PICK
            if starvation_seconds is not None:
                pick = _PICK_UNLESS_STARVING
                params |= {
                    "memory": capacity.memory_bytes,
                    "cpus": capacity.cpus + CPU_SLACK,
                    "gpus": len(capacity.gpu_ids),
                    "starving": now - timedelta(seconds=starvation_seconds),
                }
            picked = conn.execute(pick, params).first()
            if picked is None:
                return None
            taken = {
                "b_id": picked.id,
                "b_agent": agent_id,
                "b_token": token,
                "b_expires": now + timedelta(seconds=lease_seconds),
                "b_now": now,
            }
            row = conn.execute(_TAKE, taken).mappings().one()
            gpu_ids = assign_gpus(free.gpu_ids, row["gpus"])
            conn.execute(_ADD_ATTEMPT, _attempt(row, agent_id, token, gpu_ids, now))
            if gpu_ids:
                holds = [
                    {
                        "agent_id": agent_id,
                        "gpu_id": gpu,
                        "job_id": row["id"],
                        "attempt": row["attempt_count"],
                        "acquired_at": now,
                    }
                    for gpu in gpu_ids
                ]
                conn.execute(_ADD_HOLDS, holds)
            conn.execute(ADD_EVENT, _claimed_event(row, agent_id, gpu_ids, now))
        return _claim(row, agent_id, token, gpu_ids, picked.not_before)

    # --- PostgreSQL ------------------------------------------------------------------------

    def _claim_postgres(
        self,
        agent_id: str,
        capacity: Capacity,
        now: datetime,
        token: str,
        lease_seconds: float,
        starvation_seconds: float | None,
    ) -> Claim | None:
        ids = sorted(capacity.gpu_ids, key=lambda i: (len(i), i))  # assign_gpus's order
        params: dict[str, Any] = {
            "agent": agent_id,
            "token": token,
            "now": now,
            "expires": now + timedelta(seconds=lease_seconds),
            "slots": capacity.slots,
            "memory": capacity.memory_bytes,
            "cpus": capacity.cpus,
            "gpu_ids": ids,
            "starving": now - timedelta(seconds=starvation_seconds)
            if starvation_seconds is not None
            else None,
        }
        with self.db.autocommit() as conn:
            row = conn.execute(_POSTGRES_CLAIM, params).mappings().first()
        if row is None:
            return None
        return _claim(row, agent_id, token, tuple(row["taken_gpu_ids"]), row["waited_from"])


def _free(conn: Connection, agent_id: str, capacity: Capacity) -> Free:
    """What this agent has left, by the ledger: one statement."""
    count, memory, cpus, gpus = conn.execute(_HELD, {"agent": agent_id}).one()
    return capacity.remaining(
        count=int(count),
        memory_bytes=int(memory),
        cpus=float(cpus),
        gpus=set(gpus.split(",")) if gpus else set(),
    )


# The SQLite claim's statements, built once: executing a prebuilt statement skips building it
# and working out its cache key, which had been most of a claim's Python time.
_HELD = select(
    func.count(),
    func.coalesce(func.sum(attempts.c.memory_bytes), 0),
    func.coalesce(func.sum(attempts.c.cpus), 0.0),
    select(func.group_concat(gpu_holds.c.gpu_id, ","))
    .where(gpu_holds.c.agent_id == bindparam("agent"))
    .scalar_subquery(),
).where(attempts.c.agent_id == bindparam("agent"), attempts.c.released_at.is_(None))


def _fits(table: Any, memory: str, cpus: str, gpus: str) -> ColumnElement[bool]:
    """The row fits these bound amounts (CPUs come with `CPU_SLACK` added)."""
    return and_(
        table.c.memory_bytes <= bindparam(memory),
        table.c.cpus <= bindparam(cpus),
        table.c.gpus <= bindparam(gpus),
    )


_DUE = and_(
    jobs.c.status == QUEUED,
    or_(jobs.c.not_before.is_(None), jobs.c.not_before <= bindparam("now", type_=UTCDateTime())),
)
_PICK = (
    select(jobs.c.id, jobs.c.not_before)
    .where(_DUE, _fits(jobs, "free_memory", "free_cpus", "free_gpus"))
    .order_by(*CLAIM_ORDER)
    .limit(1)
)
# `pick`'s head: the first due job that could ever run here. While it has waited past the
# starvation bound and does not fit what is free, nothing smaller is started in its gap.
_HEAD = (
    select(jobs.c.memory_bytes, jobs.c.cpus, jobs.c.gpus, jobs.c.not_before, jobs.c.created_at)
    .where(_DUE, _fits(jobs, "memory", "cpus", "gpus"))
    .order_by(*CLAIM_ORDER)
    .limit(1)
    .subquery("head")
)
_STARVING_HEAD = select(literal(1)).where(
    func.coalesce(_HEAD.c.not_before, _HEAD.c.created_at)
    <= bindparam("starving", type_=UTCDateTime()),
    not_(_fits(_HEAD, "free_memory", "free_cpus", "free_gpus")),
)
_PICK_UNLESS_STARVING = _PICK.where(not_(_STARVING_HEAD.exists()))
_PEEK = (
    select(jobs)
    .where(
        _DUE,
        _fits(jobs, "memory", "cpus", "gpus"),
        jobs.c.id.not_in(bindparam("exclude", expanding=True)),
    )
    .order_by(*CLAIM_ORDER)
    .limit(1)
)
_TAKE = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_id"), jobs.c.status == QUEUED)
    .values(
        status=STARTING,
        agent_id=bindparam("b_agent"),
        lease_token=bindparam("b_token"),
        lease_expires_at=bindparam("b_expires", type_=UTCDateTime()),
        attempt_count=jobs.c.attempt_count + 1,
        not_before=None,
        updated_at=bindparam("b_now", type_=UTCDateTime()),
    )
    .returning(*jobs.c)
)
_ADD_ATTEMPT = insert(attempts)
_ADD_HOLDS = insert(gpu_holds)


def _attempt(
    row: Mapping[Any, Any], agent_id: str, token: str, gpu_ids: tuple[str, ...], now: datetime
) -> dict[str, Any]:
    return {
        "job_id": row["id"],
        "number": row["attempt_count"],
        "agent_id": agent_id,
        "lease_token": token,
        "gpu_ids": list(gpu_ids),
        "memory_bytes": row["memory_bytes"],
        "cpus": row["cpus"],
        "claimed_at": now,
    }


def _claimed_event(
    row: Mapping[Any, Any], agent_id: str, gpu_ids: tuple[str, ...], now: datetime
) -> dict[str, Any]:
    return event_values(
        row["id"],
        now,
        "claimed",
        JobStatus.QUEUED,
        JobStatus.STARTING,
        agent_id,
        _claimed_message(row["attempt_count"], agent_id, gpu_ids),
        attempt=row["attempt_count"],
    )


def _claimed_message(number: int, agent_id: str, gpu_ids: tuple[str, ...]) -> str:
    with_gpus = f" with GPUs {','.join(gpu_ids)}" if gpu_ids else ""
    return f"attempt {number} claimed by agent {agent_id}{with_gpus}"


def _claim(
    row: Mapping[Any, Any],
    agent_id: str,
    token: str,
    gpu_ids: tuple[str, ...],
    waited_from: datetime | None,
) -> Claim:
    return Claim(
        mapping.job(row),
        row["attempt_count"],
        token,
        gpu_ids,
        agent_id,
        waited_from or row["created_at"],
    )


# One round trip. Data-modifying CTEs all run, and all see the snapshot the statement began
# with; `pick` locks its row (skipping rows other agents hold), `upd` moves it only if it is
# still queued. The event's message is `_claimed_message`'s, built in SQL. `upd` finds its row
# by a scalar subquery, i.e. by primary key: joined to `pick` alone, the planner (trusting
# statistics from when few jobs were queued) walked every queued job, so each claim cost O(queue).
_POSTGRES_CLAIM = (
    text(
        """
WITH held AS (
    SELECT count(*) AS n,
           coalesce(sum(memory_bytes), 0) AS memory,
           coalesce(sum(cpus), 0) AS cpus
    FROM attempts WHERE agent_id = :agent AND released_at IS NULL
), free_gpus AS (
    SELECT coalesce(array_agg(g ORDER BY o), '{}') AS ids
    FROM unnest(CAST(:gpu_ids AS varchar[])) WITH ORDINALITY AS u(g, o)
    WHERE g NOT IN (SELECT gpu_id FROM gpu_holds WHERE agent_id = :agent)
), free AS (
    SELECT :slots - held.n AS slots, :memory - held.memory AS memory,
           :cpus - held.cpus AS cpus, cardinality(free_gpus.ids) AS gpus, free_gpus.ids
    FROM held, free_gpus
), head AS (
    SELECT memory_bytes, cpus, gpus, coalesce(not_before, created_at) AS since
    FROM jobs
    WHERE status = 'queued' AND (not_before IS NULL OR not_before <= :now)
      AND memory_bytes <= :memory AND cpus <= :cpus + 1e-9
      AND gpus <= cardinality(CAST(:gpu_ids AS varchar[]))
    ORDER BY priority DESC, created_at, id
    LIMIT 1
), pick AS (
    SELECT j.id, j.not_before
    FROM jobs j, free
    WHERE j.status = 'queued' AND (j.not_before IS NULL OR j.not_before <= :now)
      AND free.slots > 0
      AND j.memory_bytes <= free.memory AND j.cpus <= free.cpus + 1e-9 AND j.gpus <= free.gpus
      AND NOT EXISTS (
          SELECT 1 FROM head, free f
          WHERE head.since <= CAST(:starving AS timestamptz)
            AND NOT (head.memory_bytes <= f.memory AND head.cpus <= f.cpus + 1e-9
                     AND head.gpus <= f.gpus))
    ORDER BY j.priority DESC, j.created_at, j.id
    LIMIT 1
    FOR UPDATE OF j SKIP LOCKED
), upd AS (
    UPDATE jobs
    SET status = 'starting', agent_id = :agent, lease_token = :token,
        lease_expires_at = :expires, attempt_count = jobs.attempt_count + 1,
        not_before = NULL, updated_at = :now
    FROM pick, free
    WHERE jobs.id = (SELECT id FROM pick) AND jobs.id = pick.id AND jobs.status = 'queued'
    RETURNING {returning}, pick.not_before AS waited_from,
              free.ids[1:jobs.gpus] AS taken_gpu_ids
), attempt AS (
    INSERT INTO attempts (job_id, number, agent_id, lease_token, gpu_ids, memory_bytes, cpus,
                          claimed_at)
    SELECT id, attempt_count, :agent, :token, to_json(taken_gpu_ids), memory_bytes, cpus, :now
    FROM upd
), holds AS (
    INSERT INTO gpu_holds (agent_id, gpu_id, job_id, attempt, acquired_at)
    SELECT :agent, g, upd.id, upd.attempt_count, :now FROM upd, unnest(upd.taken_gpu_ids) AS g
), event AS (
    INSERT INTO events (job_id, at, kind, from_status, to_status, attempt, actor, message)
    SELECT id, :now, 'claimed', 'queued', 'starting', attempt_count, :agent,
           'attempt ' || attempt_count || ' claimed by agent ' || CAST(:agent AS text)
           || CASE WHEN gpus > 0 THEN ' with GPUs ' || array_to_string(taken_gpu_ids, ',')
                   ELSE '' END
    FROM upd
)
SELECT * FROM upd
""".replace("{returning}", ", ".join(f"jobs.{c.name}" for c in jobs.c))
    )
    .bindparams(
        bindparam("now", type_=UTCDateTime()),
        bindparam("expires", type_=UTCDateTime()),
        bindparam("starving", type_=UTCDateTime()),
        bindparam("gpu_ids", type_=ARRAY(String())),
    )
    .columns(  # by position: the RETURNING list is jobs.c's, in order
        *jobs.c,
        column("waited_from", UTCDateTime()),
        column("taken_gpu_ids", ARRAY(String())),
    )
)
