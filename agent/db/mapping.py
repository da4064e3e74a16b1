"""Rows ↔ records, in one place and by field name: a field that a row and a record share
needs no line here, so adding one touches the model, the record and the migration only."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import fields
from typing import Any, TypeVar

from agent.core.jobs import JobStatus
from agent.core.records import ActiveAttempt, AgentInfo, Attempt, Event, Job, NewJob
from agent.db.models import AgentRow, AttemptRow, EventRow, JobRow

R = TypeVar("R")


def record(cls: type[R], row: object, **derived: Any) -> R:
    """A frozen record of `cls` from a row: every field the row has, copied (JSON columns are
    mutable), plus `derived` values for the fields that need a conversion."""
    values = dict(derived)
    for field in fields(cls):  # type: ignore[arg-type]
        if field.name not in values and hasattr(row, field.name):
            values[field.name] = copy.deepcopy(getattr(row, field.name))
    return cls(**values)


def new_job_values(new: NewJob) -> dict[str, Any]:
    """The columns of a new job row that come from its resolved spec."""
    return {field.name: copy.deepcopy(getattr(new, field.name)) for field in fields(NewJob)}


def attempt(row: AttemptRow) -> Attempt:
    return record(Attempt, row, gpu_ids=list(row.gpu_ids or []))


def job(row: JobRow, attempts: Iterable[AttemptRow]) -> Job:
    return record(
        Job,
        row,
        status=JobStatus(row.status),
        params=dict(row.params or {}),
        env=dict(row.env or {}),
        labels=dict(row.labels or {}),
        non_retryable_exit_codes=list(row.non_retryable_exit_codes or []),
        attempts=[attempt(a) for a in attempts],
    )


def active(job_row: JobRow, attempt_row: AttemptRow) -> ActiveAttempt:
    return record(
        ActiveAttempt,
        attempt_row,
        job_id=job_row.id,
        attempt=attempt_row.number,
        status=JobStatus(job_row.status),
        gpu_ids=tuple(attempt_row.gpu_ids),
    )


def event(row: EventRow) -> Event:
    return record(Event, row)


def agent(
    row: AgentRow,
    *,
    running: int,
    held_memory_bytes: int,
    held_cpus: float,
    gpu_holders: dict[str, str],
) -> AgentInfo:
    return record(
        AgentInfo,
        row,
        gpu_ids=list(row.gpu_ids or []),
        running=running,
        held_memory_bytes=held_memory_bytes,
        held_cpus=held_cpus,
        gpu_holders=gpu_holders,
    )
