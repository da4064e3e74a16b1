"""Response shapes and the original `/train` request."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.core.jobs import JobStatus, Real, Whole, check_params
from agent.core.records import AgentInfo, Attempt, Job, Stats
from agent.core.training import EPOCH_TOTALS, STEP_TOTALS, SeriesPage, TrainingSummary
from agent.core.units import format_memory, human_size


class ErrorOut(BaseModel):
    detail: str = Field(description="What went wrong and what to change.")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the errors a group of routes can answer, all `{"detail": "..."}`."""
    words = {
        400: "The request is malformed (the detail says what to change).",
        401: "No valid API token (Authorization: Bearer <token>).",
        403: "Refused (a browser page from another origin).",
        404: "No such job (or not yours), or nothing at that path.",
        409: "The job is not in a state that allows this.",
        413: "The request body is too large.",
        429: "The queue is full, or you are at a quota; try again later.",
        502: "An agent that holds the job's files answered with an error.",
        503: "A dependency (database, Docker engine, agent) cannot be reached.",
    }
    # JSON even on routes whose success is text (logs): listed under application/json too.
    json_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
    return {
        code: {"model": ErrorOut, "description": words[code], "content": json_body}
        for code in codes
    }


class ResourcesOut(BaseModel):
    memory: str = Field(description="As a spec gives it ('4g'); memory_human as people read it.")
    memory_bytes: int
    memory_human: str = Field(examples=["22.5 GiB"])
    cpus: float
    gpus: int
    disk: str | None = Field(description="The disk budget ('100g'); null: none.")
    disk_bytes: int | None

    @classmethod
    def of(cls, job: Job) -> ResourcesOut:
        return cls(
            memory=format_memory(job.memory_bytes),
            memory_bytes=job.memory_bytes,
            memory_human=human_size(job.memory_bytes),
            cpus=job.cpus,
            gpus=job.gpus,
            disk=format_memory(job.disk_bytes) if job.disk_bytes else None,
            disk_bytes=job.disk_bytes,
        )


class JobOut(BaseModel):
    """A job record (`from_attributes`, unknown record fields ignored) plus what the API
    derives: resources as people read them, when a retry may start, why it cannot run."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    status: JobStatus
    name: str
    image: str
    command: list[str] | None
    params: dict[str, Any]
    env: dict[str, str]
    resources: ResourcesOut
    timeout_seconds: int | None
    max_retries: int
    priority: int
    retry_on: list[str] | None
    non_retryable_exit_codes: list[int]
    labels: dict[str, str]
    workdir: str | None
    stop_grace_seconds: int | None
    stall_timeout_seconds: int | None
    outcome: str | None = Field(description="How the latest attempt ended.")
    exit_code: int | None
    reason: str | None
    attempt_count: int
    retries_used: int
    next_attempt_at: datetime | None = Field(description="When a scheduled retry may start.")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    agent_id: str | None
    cancel_requested_at: datetime | None
    cancel_requested_by: str | None
    unschedulable_reason: str | None = Field(
        default=None, description="Why no live agent can run this queued job, if none can."
    )
    attempts: list[Attempt] | None = Field(
        default=None, description="Every container run (only on GET /jobs/{id})."
    )
    progress: float | None = Field(
        default=None,
        description="0 to 1, from the JSON lines the job prints on stdout: step / "
        f"({' | '.join(STEP_TOTALS)}), else epoch / ({' | '.join(EPOCH_TOTALS)}).",
    )
    eta_seconds: float | None = Field(
        default=None,
        description="Seconds until progress reaches 1 at the current attempt's rate; null "
        "while unknown and once the job is not running.",
    )
    latest_metrics: dict[str, int | float] | None = Field(
        default=None,
        description="The last value of each numeric field the job printed in a JSON line "
        "(series: GET /jobs/{id}/metrics).",
    )

    @classmethod
    def of(
        cls,
        job: Job,
        *,
        with_attempts: bool = False,
        unschedulable: str | None = None,
        training: TrainingSummary | None = None,
    ) -> JobOut:
        return cls.model_validate(
            {
                **vars(job),
                "resources": ResourcesOut.of(job),
                "next_attempt_at": job.not_before if job.status is JobStatus.QUEUED else None,
                "unschedulable_reason": unschedulable,
                "attempts": job.attempts if with_attempts else None,
                **_training_fields(job, training),
            }
        )


def _training_fields(job: Job, training: TrainingSummary | None) -> dict[str, Any]:
    """progress, eta_seconds and latest_metrics, derived from the job's metrics summary. The
    ETA is only for a running job whose current attempt has reported progress."""
    if training is None:
        return {}
    fraction = training.fraction
    eta = None
    state = training.progress
    if job.status is JobStatus.RUNNING and state is not None and state.attempt == job.attempt_count:
        eta = training.eta_seconds(time.time())
    return {
        "progress": round(fraction, 6) if fraction is not None else None,
        "eta_seconds": round(eta, 1) if eta is not None else None,
        "latest_metrics": training.latest or None,
    }


class MetricPointOut(BaseModel):
    t: datetime = Field(description="When the job printed the line (the engine's timestamp).")
    step: int | float | None
    epoch: int | float | None
    attempt: int
    value: float


class MetricsOut(BaseModel):
    series: dict[str, list[MetricPointOut]] = Field(description="Points by key, oldest first.")
    cursor: int = Field(
        description="Opaque and increasing: pass it as ?since= to get only newer points."
    )
    more: bool = Field(description="The page stopped at `limit`: ask again with ?since=cursor.")

    @classmethod
    def of(cls, page: SeriesPage) -> MetricsOut:
        return cls(
            series={
                key: [
                    MetricPointOut(
                        t=p.at,
                        step=_whole(p.step),
                        epoch=_whole(p.epoch),
                        attempt=p.attempt,
                        value=p.value,
                    )
                    for p in points
                ]
                for key, points in page.series.items()
            },
            cursor=page.cursor,
            more=page.more,
        )


def _whole(value: float | None) -> int | float | None:
    """A counter stored as a float, shown as it was printed when it is whole (epoch 2, not 2.0)."""
    if value is not None and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


class TrainAccepted(JobOut):
    task_id: str = Field(description="Same as `id`; the original system's name for it.")


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class StatsOut(BaseModel):
    counts: dict[str, int]
    total: int
    success_rate: float | None = Field(description="succeeded / (succeeded + failed)")
    mean_queue_wait_seconds: float | None
    mean_run_seconds: float | None
    queue_bound: int

    @classmethod
    def of(cls, stats: Stats, queue_bound: int) -> StatsOut:
        return cls(**stats.__dict__, queue_bound=queue_bound)


class HealthOut(BaseModel):
    status: str
    checks: dict[str, dict[str, Any]]


class TrainRequest(BaseModel):
    """The original system's request: hyper-parameters for the default training image.

    Known fields are checked; any other scalar field is passed to the job as a parameter too.
    """

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [{"epochs": 3, "batch_size": 16}],
            # What the validator below accepts, said in the published schema too.
            "additionalProperties": {
                "anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]
            },
        },
    )

    epochs: Whole = Field(default=5, ge=1, le=100_000)
    batch_size: Whole = Field(default=32, ge=1, le=1_000_000)
    learning_rate: Real | None = Field(default=None, gt=0, le=100, allow_inf_nan=False)

    @model_validator(mode="after")
    def _extras_are_scalars(self) -> TrainRequest:
        for key, value in (self.model_extra or {}).items():
            if not isinstance(value, str | int | float | bool):
                raise ValueError(
                    f"{key}: extra /train parameters must be strings, numbers or booleans; "
                    "use POST /jobs with 'params' for structured values"
                )
        check_params(self.params())
        return self

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {**(self.model_extra or {})}
        params.update(epochs=self.epochs, batch_size=self.batch_size)
        if self.learning_rate is not None:
            params["learning_rate"] = self.learning_rate
        return params


class AgentOut(BaseModel):
    id: str
    hostname: str
    alive: bool
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    engine_error: str | None
    engine: dict[str, Any] = Field(
        description="The agent's own Docker engine: reachable, version, last error"
    )
    slots: int
    running: int
    memory: dict[str, Any] = Field(description="total / held / free, in bytes and as text")
    cpus: dict[str, float]
    gpus: dict[str, Any] = Field(description="ids, free ids, and which job holds each held id")

    @classmethod
    def of(cls, agent: AgentInfo, *, alive: bool) -> AgentOut:
        free_memory = max(0, agent.memory_bytes - agent.held_memory_bytes)
        return cls(
            id=agent.id,
            hostname=agent.hostname,
            alive=alive,
            started_at=agent.started_at,
            heartbeat_at=agent.heartbeat_at,
            stopped_at=agent.stopped_at,
            engine_error=agent.engine_error,
            engine={
                "reachable": agent.engine_error is None,
                "version": agent.engine_version,
                "error": agent.engine_error,
            },
            slots=agent.slots,
            running=agent.running,
            memory={
                "total_bytes": agent.memory_bytes,
                "held_bytes": agent.held_memory_bytes,
                "free_bytes": free_memory,
                "total": human_size(agent.memory_bytes),
                "free": human_size(free_memory),
            },
            cpus={
                "total": agent.cpus,
                "held": round(agent.held_cpus, 3),
                "free": round(agent.cpus - agent.held_cpus, 3),
            },
            gpus={
                "ids": agent.gpu_ids,
                "free": [g for g in agent.gpu_ids if g not in agent.gpu_holders],
                "held": agent.gpu_holders,
            },
        )
