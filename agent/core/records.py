"""Plain data the queue hands out: detached from any session, safe to pass between threads."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.core.jobs import JobStatus, Outcome


@dataclass(frozen=True, kw_only=True)
class NewJob:
    """A spec with every default resolved, ready to store."""

    name: str
    image: str
    command: list[str] | None
    params: dict[str, Any]
    env: dict[str, str]
    memory_bytes: int
    cpus: float
    gpus: int
    timeout_seconds: int | None
    max_retries: int
    priority: int
    retry_on: list[str] | None = None
    non_retryable_exit_codes: list[int] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    disk_bytes: int | None = None
    stop_grace_seconds: int | None = None
    stall_timeout_seconds: int | None = None


@dataclass(frozen=True)
class Attempt:
    number: int
    agent_id: str
    container_id: str | None
    gpu_ids: list[str]
    memory_bytes: int
    cpus: float
    claimed_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    oom_killed: bool | None
    outcome: str | None
    reason: str | None


@dataclass(frozen=True, kw_only=True)
class Job(NewJob):
    """A stored job: its resolved spec plus where it stands."""

    id: str
    status: JobStatus
    reason: str | None
    outcome: str | None
    exit_code: int | None
    attempt_count: int
    retries_used: int
    infra_retries_used: int
    not_before: datetime | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    agent_id: str | None
    cancel_requested_at: datetime | None
    cancel_requested_by: str | None
    attempts: list[Attempt] = field(default_factory=list)


@dataclass(frozen=True)
class Event:
    id: int
    at: datetime
    kind: str
    from_status: str | None
    to_status: str | None
    attempt: int | None
    actor: str
    message: str


@dataclass(frozen=True)
class Claim:
    """One attempt an agent holds. Every write about it is fenced by `lease_token`."""

    job: Job
    attempt: int
    lease_token: str
    gpu_ids: tuple[str, ...]
    agent_id: str  # the agent the attempt belongs to (the actor of its events)
    waiting_since: datetime | None = None  # when it became claimable: submit, or retry's time


@dataclass(frozen=True)
class ActiveAttempt:
    job_id: str
    attempt: int
    lease_token: str
    status: JobStatus
    container_id: str | None
    memory_bytes: int
    cpus: float
    gpu_ids: tuple[str, ...]
    started_at: datetime | None = None


@dataclass(frozen=True)
class AttemptResult:
    outcome: Outcome
    reason: str
    exit_code: int | None = None
    oom_killed: bool | None = None


@dataclass(frozen=True)
class Stats:
    counts: dict[str, int]
    total: int
    success_rate: float | None
    mean_queue_wait_seconds: float | None
    mean_run_seconds: float | None


@dataclass(frozen=True)
class AgentInfo:
    """A registered agent, what it offers and what it holds now."""

    id: str
    hostname: str
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    slots: int
    memory_bytes: int
    cpus: float
    gpu_ids: list[str]
    engine_error: str | None
    running: int
    held_memory_bytes: int
    held_cpus: float
    gpu_holders: dict[str, str]  # gpu id -> job id
    engine_version: str | None = None
    endpoint: str | None = None
