"""SQLAlchemy 2.0 tables: jobs, attempts (one per container run), events (the audit trail)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way in and out, also on SQLite (which stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use UTC-aware ones")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_created", "created_at"),
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    # Room for what comes next: per-user ownership and idempotent submission.
    owner: Mapped[str | None] = mapped_column(String(64), default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), default=None)

    image: Mapped[str] = mapped_column(String(512))
    command: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    env: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    cpus: Mapped[float] = mapped_column(Float)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    timeout_seconds: Mapped[int | None] = mapped_column(Integer, default=None)
    max_retries: Mapped[int] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    retry_on: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    non_retryable_exit_codes: Mapped[list[int]] = mapped_column(JSON, default=list)
    labels: Mapped[dict[str, str] | None] = mapped_column(JSON, default=None)
    workdir: Mapped[str | None] = mapped_column(String(64), default=None)
    disk_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    stop_grace_seconds: Mapped[int | None] = mapped_column(Integer, default=None)
    stall_timeout_seconds: Mapped[int | None] = mapped_column(Integer, default=None)

    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    outcome: Mapped[str | None] = mapped_column(String(16), default=None)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    retries_used: Mapped[int] = mapped_column(Integer, default=0)
    infra_retries_used: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime | None] = mapped_column(default=None)

    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    agent_id: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_token: Mapped[str | None] = mapped_column(String(32), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested_by: Mapped[str | None] = mapped_column(String(64), default=None)


# The claim order: priority (high first), then oldest, then id — so claiming reads the index
# in order instead of sorting every queued job.
Index("ix_jobs_claim", JobRow.status, JobRow.priority.desc(), JobRow.created_at, JobRow.id)
# One user's jobs: their list (newest first) and their quota counts (queued, GPUs running).
Index("ix_jobs_owner_created", JobRow.owner, JobRow.created_at)
Index("ix_jobs_owner_status", JobRow.owner, JobRow.status)


class JobLabelRow(Base):
    """One label of a job, for finding jobs by label with an index (the JSON column on the
    job is what responses show)."""

    __tablename__ = "job_labels"
    __table_args__ = (Index("ix_job_labels_key_value", "key", "value"),)

    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(63), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class WorkdirRow(Base):
    """An uploaded workdir (a gzip-compressed tar), by the sha256 of its bytes. In the database
    so that every agent sharing the queue can fetch it, whatever host the upload reached."""

    __tablename__ = "workdirs"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    owner: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime]
    data: Mapped[bytes] = mapped_column(LargeBinary)


class AttemptRow(Base):
    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("job_id", "number", name="uq_attempts_job_number"),
        Index("ix_attempts_agent_unreleased", "agent_id", "released_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    agent_id: Mapped[str] = mapped_column(String(64))
    lease_token: Mapped[str] = mapped_column(String(32))
    container_id: Mapped[str | None] = mapped_column(String(64), default=None)
    gpu_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    cpus: Mapped[float] = mapped_column(Float)
    claimed_at: Mapped[datetime]
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    oom_killed: Mapped[bool | None] = mapped_column(Boolean, default=None)
    outcome: Mapped[str | None] = mapped_column(String(16), default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    # Set once the container is confirmed gone: only then are its memory, CPUs and GPUs free.
    released_at: Mapped[datetime | None] = mapped_column(default=None)


class GpuHoldRow(Base):
    """The GPU ledger: the primary key makes holding one device twice impossible."""

    __tablename__ = "gpu_holds"

    agent_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    gpu_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    acquired_at: Mapped[datetime]


class TokenRow(Base):
    """API tokens: only the SHA-256 of each is stored; a revoked one keeps its row."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class AgentRow(Base):
    """Agents register what they can hand out and heartbeat."""

    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    slots: Mapped[int] = mapped_column(Integer)
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    cpus: Mapped[float] = mapped_column(Float)
    gpu_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    engine_error: Mapped[str | None] = mapped_column(Text, default=None)
    engine_version: Mapped[str | None] = mapped_column(String(64), default=None)
    # Where the agent serves its jobs' logs and outputs to the API (None: it does not).
    endpoint: Mapped[str | None] = mapped_column(String(255), default=None)
    stopped_at: Mapped[datetime | None] = mapped_column(default=None)


class EventRow(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(16), default=None)
    to_status: Mapped[str | None] = mapped_column(String(16), default=None)
    attempt: Mapped[int | None] = mapped_column(Integer, default=None)
    actor: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text, default="")


class MetricPointRow(Base):
    """One value of one training metric, from a JSON line the job printed (agent/core/training.py).

    Series are per job (an attempt that resumes continues the curve); the id only grows, so
    it is the cursor of incremental reads."""

    __tablename__ = "metric_points"
    __table_args__ = (
        Index("ix_metric_points_job_key", "job_id", "key", "id"),
        Index("ix_metric_points_job", "job_id", "id"),
        {"sqlite_autoincrement": True},  # never reuse an id: cursors stay monotonic
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    step: Mapped[float | None] = mapped_column(Float, default=None)
    epoch: Mapped[float | None] = mapped_column(Float, default=None)
    at: Mapped[datetime]


class TrainingRow(Base):
    """Per job: the last value of each metric key and the progress state (for progress and
    ETA on every job read without touching the series)."""

    __tablename__ = "job_training"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    latest: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    progress: Mapped[float | None] = mapped_column(Float, default=None)
    progress_state: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    updated_at: Mapped[datetime]


# The tables themselves, for the hot paths written in SQLAlchemy Core (agent/db/*.py).
jobs = cast(Table, JobRow.__table__)
job_labels = cast(Table, JobLabelRow.__table__)
attempts = cast(Table, AttemptRow.__table__)
gpu_holds = cast(Table, GpuHoldRow.__table__)
agents = cast(Table, AgentRow.__table__)
events = cast(Table, EventRow.__table__)
