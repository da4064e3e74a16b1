"""Rows ↔ records, in one place and by field name: a field that a row and a record share
needs no line here, so adding one touches the model, the record and the migration only.

Rows are SQLAlchemy Core rows: every read decodes its own JSON, so nothing is copied."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

from agent.core.jobs import JobStatus
from agent.core.records import ActiveAttempt, AgentInfo, Attempt, Event, Job, NewJob

R = TypeVar("R")


_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def record(cls: type[R], row: Mapping[Any, Any], **derived: Any) -> R:
    """A frozen record of `cls` from a row mapping: every field the row has, plus `derived`
    values for the fields that need a conversion."""
    values = {name: row[name] for name in _names(cls) if name not in derived and name in row}
    values.update(derived)
    return cls(**values)


def new_job_values(new: NewJob) -> dict[str, Any]:
    """The columns of a new job row that come from its resolved spec."""
    return {name: getattr(new, name) for name in _names(NewJob)}


def attempt(row: Mapping[Any, Any]) -> Attempt:
    return record(Attempt, row, gpu_ids=list(row["gpu_ids"] or []))


def job(row: Mapping[Any, Any], attempts: Iterable[Mapping[Any, Any]] = ()) -> Job:
    return record(
        Job,
        row,
        status=JobStatus(row["status"]),
        params=row["params"] or {},
        env=row["env"] or {},
        labels=row["labels"] or {},
        non_retryable_exit_codes=row["non_retryable_exit_codes"] or [],
        attempts=[attempt(a) for a in attempts],
    )


def active(row: Mapping[Any, Any]) -> ActiveAttempt:
    """From a join of a job (`job_id`, `status`) and its current attempt."""
    return record(
        ActiveAttempt,
        row,
        attempt=row["number"],
        status=JobStatus(row["status"]),
        gpu_ids=tuple(row["gpu_ids"] or ()),
    )


def event(row: Mapping[Any, Any]) -> Event:
    return record(Event, row)


def agent(
    row: Mapping[Any, Any],
    *,
    running: int,
    held_memory_bytes: int,
    held_cpus: float,
    gpu_holders: dict[str, str],
) -> AgentInfo:
    return record(
        AgentInfo,
        row,
        gpu_ids=list(row["gpu_ids"] or []),
        running=running,
        held_memory_bytes=held_memory_bytes,
        held_cpus=held_cpus,
        gpu_holders=gpu_holders,
    )
