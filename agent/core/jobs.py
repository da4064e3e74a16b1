"""Job states, the table of allowed transitions, and the job spec — pure, no I/O."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from agent.core.errors import InvalidTransition
from agent.core.units import parse_memory


class JobStatus(StrEnum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES

    @property
    def is_active(self) -> bool:
        """Claimed by an agent: a container may exist for it."""
        return self in (JobStatus.STARTING, JobStatus.RUNNING)


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

# The only moves a job may make. SQL enforces the same table: every status change is
# `UPDATE jobs SET status=:to WHERE id=:id AND status=:from`.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.STARTING, JobStatus.CANCELLED}),
    JobStatus.STARTING: frozenset(
        {JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def can_transition(current: JobStatus, target: JobStatus) -> bool:
    return target in TRANSITIONS[current]


def check_transition(current: JobStatus, target: JobStatus) -> None:
    if not can_transition(current, target):
        raise InvalidTransition(f"a {current.value} job cannot become {target.value}")


class Outcome(StrEnum):
    """How one attempt (one container run) ended."""

    SUCCEEDED = "succeeded"
    USER_ERROR = "user_error"
    OOM = "oom"
    CUDA_OOM = "cuda_oom"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    CONFIG_ERROR = "config_error"
    INFRA_ERROR = "infra_error"


# What a job may ask to retry: `cancelled` never (a person asked), `infra_error` always (on its
# own budget), `succeeded` has nothing to retry.
RETRYABLE_ON_REQUEST = frozenset(
    {Outcome.USER_ERROR, Outcome.CUDA_OOM, Outcome.OOM, Outcome.TIMEOUT, Outcome.CONFIG_ERROR}
)


# --- the job spec a user submits -------------------------------------------------------------

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Docker's reference grammar: [registry[:port]/]path[:tag][@digest]; path components are
# lower-case alphanumerics joined by '.', '_', '__' or runs of '-'; tags are ASCII.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REF = re.compile(
    rf"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?"
)
MIN_MEMORY_BYTES = 6 * 1024 * 1024  # Docker refuses limits below 6 MiB
MAX_SPEC_JSON_BYTES = 64 * 1024
RESERVED_ENV_PREFIX = "TRAINYARD_"

JobName = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True)]


class Resources(BaseModel):
    """What one container may use."""

    model_config = ConfigDict(extra="forbid")

    memory: str | None = Field(
        default=None,
        description="Memory limit like Docker's --memory: '512m', '4g'. Swap is never above it.",
        examples=["4g"],
    )
    cpus: float | None = Field(default=None, gt=0, le=1024, description="CPU cores, e.g. 1.5")
    gpus: int = Field(default=0, ge=0, le=64, description="Number of whole GPUs.")

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is None:
            return None
        size = parse_memory(value)
        if size < MIN_MEMORY_BYTES:
            raise ValueError("memory must be at least 6m (Docker's smallest limit)")
        return value.strip().lower()


class JobSpec(BaseModel):
    """A training job as a user submits it to `POST /jobs`."""

    model_config = ConfigDict(extra="forbid")

    name: JobName | None = Field(
        default=None, description="A label for people; need not be unique."
    )
    image: str | None = Field(
        default=None,
        max_length=512,
        description="Docker image; defaults to the Trainyard training image.",
        examples=["trainyard/train:latest"],
    )
    command: list[Annotated[str, StringConstraints(max_length=4096)]] | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Replaces the image's CMD, as in Docker (exec form, a list of strings).",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Hyper-parameters, handed to the container as JSON in TRAINYARD_PARAMS.",
        examples=[{"epochs": 3, "batch_size": 16}],
    )
    env: dict[str, Annotated[str, StringConstraints(max_length=32768)]] = Field(
        default_factory=dict, description="Extra environment variables for the container."
    )
    resources: Resources = Field(default_factory=Resources)
    timeout_seconds: int | None = Field(default=None, ge=1, le=30 * 24 * 3600)
    max_retries: int | None = Field(default=None, ge=0, le=100)
    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher runs first.")
    retry_on: list[Outcome] | None = Field(
        default=None,
        max_length=8,
        description="Outcomes worth a retry, replacing the default [user_error, cuda_oom]. "
        "Allowed: user_error, cuda_oom, oom, timeout, config_error. infra_error is always "
        "retried on its own budget; cancelled never.",
    )
    non_retryable_exit_codes: list[Annotated[int, Field(ge=0, le=255)]] = Field(
        default_factory=list, max_length=256, description="Exit codes that are never retried."
    )

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not _IMAGE_REF.fullmatch(value):
            raise ValueError(
                "image must be a Docker image reference like 'trainyard/train:latest' "
                "or 'registry:5000/team/model@sha256:<digest>'"
            )
        return value

    @field_validator("retry_on")
    @classmethod
    def _retry_on(cls, value: list[Outcome] | None) -> list[Outcome] | None:
        for outcome in value or []:
            if outcome not in RETRYABLE_ON_REQUEST:
                raise ValueError(
                    f"{outcome.value} cannot be retried on request; allowed: "
                    + ", ".join(sorted(o.value for o in RETRYABLE_ON_REQUEST))
                )
        return sorted(set(value), key=list(Outcome).index) if value is not None else None

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _ENV_NAME.fullmatch(key):
                raise ValueError(f"env name {key!r} must match [A-Za-z_][A-Za-z0-9_]*")
            if key.upper().startswith(RESERVED_ENV_PREFIX):
                raise ValueError(f"env name {key!r}: names starting with TRAINYARD_ are reserved")
        return value

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_params(value)


def check_params(value: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters must be plain, bounded JSON: they travel in an environment variable."""
    try:
        encoded = json.dumps(value, allow_nan=False)
    except ValueError as exc:
        raise ValueError("params must be plain JSON (no NaN or Infinity)") from exc
    if len(encoded) > MAX_SPEC_JSON_BYTES:
        raise ValueError(f"params must encode to at most {MAX_SPEC_JSON_BYTES} bytes of JSON")
    return value
