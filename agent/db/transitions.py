"""What every status change shares: the compare-and-set of a job's status, and its audit event.
SQLAlchemy Core on a connection inside the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, update

from agent.core.errors import StaleState
from agent.core.jobs import JobStatus, check_transition
from agent.db.models import events, jobs

ACTIVE = (JobStatus.STARTING.value, JobStatus.RUNNING.value)
ADD_EVENT = insert(events)
"""Execute with `event_values(...)`, or a list of them."""


def cas(
    conn: Connection,
    job_id: str,
    expected: JobStatus,
    target: JobStatus,
    *,
    now: datetime,
    token: str | None = None,
    strict: bool = True,
    **values: Any,
) -> bool:
    """Move the job from `expected` to `target` (fenced by its lease `token` when given).
    False, or StaleState when `strict`, if it was no longer there."""
    check_transition(expected, target)
    conditions = [jobs.c.id == job_id, jobs.c.status == expected.value]
    if token is not None:
        conditions.append(jobs.c.lease_token == token)
    result = conn.execute(
        update(jobs).where(*conditions).values(status=target.value, updated_at=now, **values)
    )
    if result.rowcount == 1:
        return True
    if strict:
        raise StaleState(
            f"job {job_id} was no longer {expected.value} (or its lease moved on); "
            f"not moving it to {target.value}"
        )
    return False


def event_values(
    job_id: str,
    at: datetime,
    kind: str,
    from_status: JobStatus | None,
    to_status: JobStatus | None,
    actor: str,
    message: str,
    attempt: int | None = None,
) -> dict[str, Any]:
    """One row of the audit trail (for `add_event`, or many at once in an executemany)."""
    return {
        "job_id": job_id,
        "at": at,
        "kind": kind,
        "from_status": from_status.value if from_status else None,
        "to_status": to_status.value if to_status else None,
        "attempt": attempt,
        "actor": actor,
        "message": message,
    }
