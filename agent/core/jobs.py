"""Job states, the table of allowed transitions, and the job spec — pure, no I/O."""

from __future__ import annotations

import json
import math
import re
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from agent.core.errors import InvalidTransition
from agent.core.units import parse_memory
from agent.core.workdirs import DIGEST


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


def check_deletable(job_id: str, status: JobStatus) -> None:
    """Only a finished job may be deleted: a running one still has a container and a log."""
    if not status.is_final:
        raise InvalidTransition(
            f"job {job_id} is {status.value}; only a finished job can be deleted (cancel it first)"
        )


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
    STALLED = "stalled"
    DISK_EXCEEDED = "disk_exceeded"


# What a job may ask to retry: `cancelled` never (a person asked), `infra_error` always (on its
# own budget), `succeeded` has nothing to retry.
RETRYABLE_ON_REQUEST = frozenset(
    {
        Outcome.USER_ERROR,
        Outcome.CUDA_OOM,
        Outcome.OOM,
        Outcome.TIMEOUT,
        Outcome.CONFIG_ERROR,
        Outcome.DISK_EXCEEDED,
    }
)


# --- the job spec a user submits -------------------------------------------------------------
#
# Every limit is a constant here, and every refusal names the field and the limit: a spec that
# validates can be stored (SQLite and PostgreSQL), served back as JSON, and run by Docker.

MIN_CPUS = 0.01
"""Docker's own smallest CPU limit; less rounds to NanoCpus=0, which Docker reads as no limit."""
MAX_CPUS = 1024
"""More cores than any machine this runs on: a typo, not a request."""
MIN_MEMORY_BYTES = 6 * 1024 * 1024
"""Docker refuses memory limits below 6 MiB."""
MAX_MEMORY_BYTES = 64 * 1024**4
"""64 TiB: more than any machine offers; keeps every size far inside a BigInteger."""
MAX_MEMORY_CHARS = 32
"""A memory size is a short text like '512m'."""
MAX_GPUS = 64
"""Whole GPUs one job may ask for."""
MAX_TIMEOUT_SECONDS = 30 * 24 * 3600
"""30 days."""
MAX_RETRIES = 100
"""Retries one job may ask for."""
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000
"""The priority range (higher runs first)."""
MAX_NAME_CHARS = 128
"""A job's name (the database column's width)."""
MAX_IMAGE_CHARS = 512
"""A whole image reference: name, tag and digest."""
MAX_IMAGE_NAME_CHARS = 255
"""Docker's limit on an image's name (registry and path, without tag or digest)."""
MAX_COMMAND_ITEMS = 256
"""Arguments in `command`."""
MAX_COMMAND_ITEM_CHARS = 4096
"""Characters in one argument of `command`."""
MAX_ENV_VARS = 128
"""Variables in `env`."""
MAX_ENV_NAME_CHARS = 256
"""Characters in one variable's name."""
MAX_ENV_VALUE_CHARS = 32 * 1024
"""Characters in one variable's value (and, as UTF-8, at most `MAX_ENV_VALUE_BYTES` bytes)."""
MAX_ENV_VALUE_BYTES = 32 * 1024
"""Bytes (UTF-8) in one variable's value."""
MAX_ENV_TOTAL_BYTES = 128 * 1024
"""Bytes (UTF-8) of all of `env` as the container sees it: NAME=value for each."""
MAX_SPEC_JSON_BYTES = 64 * 1024
"""Bytes of `params` as JSON, in the form the container receives (TRAINYARD_PARAMS: non-ASCII
escaped as \\uXXXX)."""
MAX_PARAMS_DEPTH = 32
"""How deeply objects and arrays in `params` may nest (`params` itself is level 1)."""
MAX_PARAMS_KEYS = 1024
"""Keys in `params`, counted over every nested object."""
MAX_RETRY_ON = 8
"""Entries in `retry_on`."""
MAX_EXIT_CODES = 256
"""Entries in `non_retryable_exit_codes`."""
MAX_LABELS = 32
"""Labels on one job."""
MAX_LABEL_VALUE_CHARS = 256
"""Characters in one label's value."""
MAX_STOP_GRACE_SECONDS = 3600
"""Longest a stop may wait for SIGTERM to work before SIGKILL."""
MIN_STALL_TIMEOUT_SECONDS = 1
"""Seconds; how long is right is the job's to say (a slow data loader needs minutes)."""
MIN_DISK_BYTES = 1024 * 1024
"""1 MiB: the smallest disk budget."""
_LABEL_KEY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?")
RESERVED_ENV_PREFIXES = ("TRAINYARD_", "NVIDIA_")
"""Environment names a spec may not set: the agent sets TRAINYARD_* (job id, params...) and
NVIDIA_* (the GPU devices of the job's claim: NVIDIA_VISIBLE_DEVICES=all would hand every GPU
to the job on a host whose default runtime is nvidia, outside the ledger)."""
RESERVED_ENV_PREFIX = RESERVED_ENV_PREFIXES[0]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The same rule for the published schema (ECMA regex: no inline flags), reserved prefixes too.
ENV_NAME_SCHEMA = (
    r"^(?![Tt][Rr][Aa][Ii][Nn][Yy][Aa][Rr][Dd]_|[Nn][Vv][Ii][Dd][Ii][Aa]_)[A-Za-z_][A-Za-z0-9_]*$"
)
# Docker's reference grammar: [registry[:port]/]path[:tag][@digest]; path components are
# lower-case alphanumerics joined by '.', '_', '__' or runs of '-'; tags are ASCII.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REF = re.compile(
    rf"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?"
)
T = TypeVar("T")
_SURROGATE = re.compile("[\\ud800-\\udfff]")
_SHOWN_CHARS = 40


def _show(text: str) -> str:
    """A user's text, quoted for an error message: short, and escaped (repr) so NUL or a lone
    surrogate in it cannot break the JSON response."""
    return repr(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "...")


def text_problem(value: str) -> str | None:
    """Why a text cannot be stored and served (None when it can): PostgreSQL refuses NUL in
    text, and a lone surrogate cannot be encoded as UTF-8 (every response with it would fail)."""
    if "\x00" in value:
        return "must not contain NUL (\\u0000)"
    if _SURROGATE.search(value):
        return "must be valid Unicode: no lone surrogates (\\ud800-\\udfff)"
    return None


def check_text(value: T) -> T:
    """The validator for every free text in a spec (see `text_problem`). It runs before
    pydantic's own string check, whose word for a lone surrogate is less clear."""
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            raise ValueError(problem)
    return value


def not_bool(value: T) -> T:
    """JSON's true and false are not numbers (pydantic would read them as 1 and 0)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


Whole = Annotated[int, BeforeValidator(not_bool)]
Real = Annotated[float, AllowInfNan(False), BeforeValidator(not_bool)]  # finite numbers only

# Constraints first: a BeforeValidator wraps what precedes it, so it runs first.
JobName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_NAME_CHARS, strip_whitespace=True),
    BeforeValidator(check_text),
]
CommandItem = Annotated[
    str, StringConstraints(max_length=MAX_COMMAND_ITEM_CHARS), BeforeValidator(check_text)
]
EnvName = Annotated[str, BeforeValidator(check_text)]
ImageRef = Annotated[
    str, StringConstraints(max_length=MAX_IMAGE_CHARS), BeforeValidator(check_text)
]
MemorySize = Annotated[
    str, StringConstraints(max_length=MAX_MEMORY_CHARS), BeforeValidator(check_text)
]
EnvValue = Annotated[
    str, StringConstraints(max_length=MAX_ENV_VALUE_CHARS), BeforeValidator(check_text)
]
LabelKey = Annotated[str, BeforeValidator(check_text)]
LabelValue = Annotated[
    str, StringConstraints(max_length=MAX_LABEL_VALUE_CHARS), BeforeValidator(check_text)
]


class Resources(BaseModel):
    """What one container may use."""

    model_config = ConfigDict(extra="forbid")

    memory: MemorySize | None = Field(
        default=None,
        description="Memory limit like Docker's --memory: '512m', '4g' (6m to 64t). "
        "Swap is never above it.",
        examples=["4g"],
    )
    cpus: Real | None = Field(
        default=None,
        gt=0,
        le=MAX_CPUS,
        allow_inf_nan=False,
        description=f"CPU cores, e.g. 1.5 ({MIN_CPUS} to {MAX_CPUS}).",
        json_schema_extra={"minimum": MIN_CPUS},
    )
    gpus: Whole = Field(default=0, ge=0, le=MAX_GPUS, description="Number of whole GPUs.")
    disk: MemorySize | None = Field(
        default=None,
        description="Disk the job may fill: its /outputs plus what it writes in its "
        "container's filesystem ('20g'; 1m to 64t). Past it the agent stops the job with "
        "outcome disk_exceeded. Default: the agent's TRAINYARD_DEFAULT_DISK.",
        examples=["20g"],
    )

    @field_validator("disk")
    @classmethod
    def _disk(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            size = parse_memory(value, maximum=MAX_MEMORY_BYTES)
        except ValueError as exc:
            raise ValueError(str(exc).replace("memory", "disk", 1)) from None
        if size < MIN_DISK_BYTES:
            raise ValueError("disk must be at least 1m")
        return value.strip().lower()

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is None:
            return None
        size = parse_memory(value, maximum=MAX_MEMORY_BYTES)
        if size < MIN_MEMORY_BYTES:
            raise ValueError("memory must be at least 6m (Docker's smallest limit)")
        return value.strip().lower()

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, value: float | None) -> float | None:
        if value is not None and value < MIN_CPUS:
            raise ValueError(
                f"cpus must be at least {MIN_CPUS} (Docker's smallest limit; less would "
                "round to no limit at all)"
            )
        return value


# Validated as any outcome (so a refusal can say why `cancelled` is not allowed), published as
# the outcomes a job may ask to retry.
RetryableOutcome = Annotated[
    Outcome,
    WithJsonSchema(
        {"type": "string", "enum": [o.value for o in Outcome if o in RETRYABLE_ON_REQUEST]}
    ),
]


class JobSpec(BaseModel):
    """A training job as a user submits it to `POST /jobs`."""

    model_config = ConfigDict(extra="forbid")

    name: JobName | None = Field(
        default=None, description="A label for people; need not be unique."
    )
    image: ImageRef | None = Field(
        default=None,
        description="Docker image; defaults to the Trainyard training image.",
        examples=["trainyard/train:latest"],
    )
    command: list[CommandItem] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_COMMAND_ITEMS,
        description="Replaces the image's CMD, as in Docker (exec form, a list of strings).",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Hyper-parameters, handed to the container as JSON in TRAINYARD_PARAMS "
        f"(at most {MAX_SPEC_JSON_BYTES} bytes, {MAX_PARAMS_DEPTH} levels, "
        f"{MAX_PARAMS_KEYS} keys).",
        examples=[{"epochs": 3, "batch_size": 16}],
    )
    env: dict[EnvName, EnvValue] = Field(
        default_factory=dict,
        max_length=MAX_ENV_VARS,
        json_schema_extra={
            "propertyNames": {"pattern": ENV_NAME_SCHEMA, "maxLength": MAX_ENV_NAME_CHARS}
        },
        description="Extra environment variables for the container. TRAINYARD_* and NVIDIA_* "
        "are set by the agent.",
    )
    resources: Resources = Field(default_factory=Resources)
    timeout_seconds: Whole | None = Field(default=None, ge=1, le=MAX_TIMEOUT_SECONDS)
    max_retries: Whole | None = Field(default=None, ge=0, le=MAX_RETRIES)
    priority: Whole = Field(
        default=0, ge=MIN_PRIORITY, le=MAX_PRIORITY, description="Higher runs first."
    )
    retry_on: list[RetryableOutcome] | None = Field(
        default=None,
        max_length=MAX_RETRY_ON,
        description="Outcomes worth a retry, replacing the default [user_error, cuda_oom]. "
        "Allowed: user_error, cuda_oom, oom, timeout, config_error. infra_error is always "
        "retried on its own budget; cancelled never.",
    )
    non_retryable_exit_codes: list[Annotated[Whole, Field(ge=0, le=255)]] = Field(
        default_factory=list,
        max_length=MAX_EXIT_CODES,
        description="Exit codes that are never retried.",
    )
    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        max_length=MAX_LABELS,
        json_schema_extra={"propertyNames": {"pattern": f"^{_LABEL_KEY.pattern}$"}},
        description=f"Key/value tags for finding jobs (GET /jobs?label=team=vision); at most "
        f"{MAX_LABELS}; keys like 'team' or 'example.com/tier' (letters, digits, '.', '_', "
        f"'-', '/'; at most 63), values at most {MAX_LABEL_VALUE_CHARS} characters.",
        examples=[{"team": "vision", "experiment": "lr-sweep"}],
    )
    workdir: str | None = Field(
        default=None,
        description="sha256 of a workdir uploaded with PUT /workdirs/{sha256}: the job sees it "
        "read-only at /workspace, its working directory (the CLI's --workdir does this).",
        json_schema_extra={"pattern": f"^{DIGEST.pattern}$"},
    )
    stop_grace_seconds: Whole | None = Field(
        default=None,
        ge=0,
        le=MAX_STOP_GRACE_SECONDS,
        description="How long a cancel or timeout waits after SIGTERM before SIGKILL "
        "(default: the agent's TRAINYARD_STOP_GRACE_SECONDS).",
    )
    stall_timeout_seconds: Whole | None = Field(
        default=None,
        ge=MIN_STALL_TIMEOUT_SECONDS,
        le=MAX_TIMEOUT_SECONDS,
        description="Stop the job when it prints nothing for this long (a hung collective, a "
        "deadlocked data loader): outcome stalled, retried on the infrastructure budget. "
        "Default: the agent's TRAINYARD_DEFAULT_STALL_TIMEOUT_SECONDS (off unless set).",
    )

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, value: str | None) -> str | None:
        if value is not None and not DIGEST.fullmatch(value):
            raise ValueError(
                "workdir must be the sha256 (64 lowercase hex digits) of a tree uploaded "
                "with PUT /workdirs/{sha256}"
            )
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _LABEL_KEY.fullmatch(key):
                raise ValueError(
                    f"label key {_show(key)} must be 1 to 63 letters, digits, '.', '_', '-' "
                    "or '/', starting and ending with a letter or digit"
                )
        return value

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
        reference = value.split("@", 1)[0]
        tag_at = reference.rfind(":")
        image_name = reference[:tag_at] if tag_at > reference.rfind("/") else reference
        if len(image_name) > MAX_IMAGE_NAME_CHARS:
            raise ValueError(
                f"image name (without tag or digest) must be at most {MAX_IMAGE_NAME_CHARS} "
                "characters (Docker's limit)"
            )
        return value

    @model_validator(mode="after")
    def _name_fits(self) -> JobSpec:
        # Without a name a job is named after its image's last part ("model:v1"), which may be
        # longer than a name may be (a 255-character path component, a 128-character tag).
        if self.name is None and self.image is not None:
            derived = self.image.rsplit("/", 1)[-1].split("@")[0]
            if len(derived) > MAX_NAME_CHARS:
                self.name = derived[:MAX_NAME_CHARS]
        return self

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
        total = 0
        for key, item in value.items():
            if len(key) > MAX_ENV_NAME_CHARS:
                raise ValueError(
                    f"env name {_show(key)} is {len(key)} characters; at most {MAX_ENV_NAME_CHARS}"
                )
            if not _ENV_NAME.fullmatch(key):
                raise ValueError(f"env name {_show(key)} must match [A-Za-z_][A-Za-z0-9_]*")
            reserved = [p for p in RESERVED_ENV_PREFIXES if key.upper().startswith(p)]
            if reserved:
                raise ValueError(
                    f"env name {key!r}: names starting with {reserved[0]} are reserved "
                    f"(the agent sets them){_RESERVED_WHY.get(reserved[0], '')}"
                )
            size = len(item.encode("utf-8"))
            if size > MAX_ENV_VALUE_BYTES:
                raise ValueError(
                    f"env value of {key} is {size} bytes as UTF-8; at most "
                    f"{MAX_ENV_VALUE_BYTES} bytes each"
                )
            total += len(key) + 1 + size
        if total > MAX_ENV_TOTAL_BYTES:
            raise ValueError(
                f"env is {total} bytes in all (NAME=value, UTF-8); at most "
                f"{MAX_ENV_TOTAL_BYTES} bytes"
            )
        return value

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_params(value)


_RESERVED_WHY = {
    "NVIDIA_": ": NVIDIA_VISIBLE_DEVICES comes from the GPUs the job is given (resources.gpus)",
}


def check_params(value: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters must be plain, bounded JSON: they are stored, served back as JSON and
    travel to the container in an environment variable. So: objects, arrays, strings, finite
    numbers, booleans and null only; string keys; no NUL or lone surrogate in any key or
    string; at most `MAX_PARAMS_DEPTH` levels and `MAX_PARAMS_KEYS` keys; at most
    `MAX_SPEC_JSON_BYTES` bytes as JSON. ValueError naming the place and the limit otherwise."""
    try:
        # As the container receives it (TRAINYARD_PARAMS): ASCII, so characters are bytes.
        encoded: str | None = json.dumps(value, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        encoded = None  # the walk below says what is wrong
    if encoded is not None and len(encoded) > MAX_SPEC_JSON_BYTES:
        raise ValueError(
            f"params must encode to at most {MAX_SPEC_JSON_BYTES} bytes of JSON "
            f"(non-ASCII escaped); this is {len(encoded)}"
        )
    keys = 0
    # Iterative, so a hostile nesting depth costs no recursion; `trail` is (parent, step).
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(value, 1, ())]
    while stack:
        item, depth, trail = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_PARAMS_DEPTH:
                raise ValueError(
                    f"params must nest at most {MAX_PARAMS_DEPTH} levels of objects and arrays; "
                    f"{_place(trail)} is deeper"
                )
            if isinstance(item, list):
                stack.extend((child, depth + 1, (trail, i)) for i, child in enumerate(item))
                continue
            keys += len(item)
            if keys > MAX_PARAMS_KEYS:
                raise ValueError(
                    f"params must have at most {MAX_PARAMS_KEYS} keys in all (every level counted)"
                )
            for key, child in item.items():
                if not isinstance(key, str):
                    raise ValueError(f"params keys must be strings: {_place(trail)}")
                problem = text_problem(key)
                if problem:
                    raise ValueError(f"params key {_show(key)} in {_place(trail)} {problem}")
                stack.append((child, depth + 1, (trail, key)))
        elif isinstance(item, str):
            problem = text_problem(item)
            if problem:
                raise ValueError(f"params text at {_place(trail)} {problem}")
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"params must be plain JSON (no NaN or Infinity): {_place(trail)}")
        elif not (item is None or isinstance(item, bool | int | float)):
            raise ValueError(
                f"params must be plain JSON: {_place(trail)} is a {type(item).__name__}"
            )
    if encoded is None:  # e.g. an int past Python's digit limit (not from JSON)
        raise ValueError("params must be plain JSON")
    return value


def _place(trail: tuple[Any, ...]) -> str:
    """'params.a[0].b' for a trail of (parent, step) pairs."""
    steps: list[Any] = []
    while trail:
        trail, step = trail
        steps.append(step)
    parts = ["params"]
    for step in reversed(steps):
        parts.append(f"[{step}]" if isinstance(step, int) else f".{_show(step)[1:-1]}")
    return "".join(parts)
