"""The one settings class. Every knob is a `TRAINYARD_*` environment variable."""

from __future__ import annotations

import os
import re
import socket
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.core.training import DEFAULT_MAX_POINTS, MAX_MAX_POINTS, MIN_MAX_POINTS
from agent.core.units import parse_memory

DEFAULT_TRAIN_IMAGE = "trainyard/train:latest"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY_BYTES = 1024 * 1024
"""The default bound on a request body (TRAINYARD_MAX_BODY_BYTES): a job spec's own limits
(params 64 KiB, env 128 KiB, command 256 x 4 KiB) fit well inside it."""


def _default_agent_id() -> str:
    return socket.gethostname() or "agent"


class Settings(BaseSettings):
    """Trainyard configuration, read once from the environment (prefix `TRAINYARD_`)."""

    model_config = SettingsConfigDict(
        env_prefix="TRAINYARD_", extra="ignore", frozen=True, env_ignore_empty=True
    )

    # --- service ---
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    mode: Literal["all", "api", "agent"] = "all"
    api_workers: int = Field(
        default=1,
        ge=1,
        le=32,
        description="Processes serving the API in `run.py api` (each with its own database "
        "pool, group commit and process-local metrics); the embedded agent's mode runs one.",
    )
    data_dir: Path = Path("data")
    log_dir: Path = Path("logs")
    database_url: str = ""  # empty: SQLite under data_dir
    log_level: str = "INFO"
    allow_public_bind: bool = Field(
        default=False,
        description="Listen beyond loopback. The API then also needs an API token to exist "
        "(python run.py token create): it refuses to start without one.",
    )
    allowed_hosts: str = Field(
        default="",
        description="Host header names the API answers besides the loopback names and "
        "TRAINYARD_HOST (comma-separated; '*.example.com' matches subdomains; '*' any). Others "
        "get 400: a defence against DNS rebinding.",
    )
    cors_origins: str = Field(
        default="",
        description="Browser origins allowed to call the API cross-origin, exactly "
        "(comma-separated, e.g. https://dash.example.com). Empty: no CORS.",
    )
    max_body_bytes: int = Field(
        default=MAX_BODY_BYTES,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Larger request bodies get 413 before they are read.",
    )

    # --- queue ---
    max_queued: int = Field(
        default=10_000,
        ge=1,
        description="Submissions past this many queued jobs get 429 (a sweep queues thousands).",
    )
    quota_queued: int | None = Field(
        default=1000, ge=1, description="Jobs one user may have queued; past it 429."
    )
    quota_gpus: int | None = Field(
        default=None,
        ge=0,
        description="GPUs one user's starting and running jobs may hold (checked on submit: "
        "a GPU job past it gets 429). None: no limit.",
    )
    default_image: str = DEFAULT_TRAIN_IMAGE
    default_memory: str = "2g"
    default_cpus: float = Field(default=1.0, gt=0)
    default_timeout_seconds: int | None = Field(
        default=3 * 24 * 3600,
        ge=1,
        description="Timeout of jobs that give none (3 days): nothing runs forever by accident.",
    )
    allowed_images: str = Field(
        default="*",
        max_length=4096,
        description="Comma-separated shell-style patterns of images jobs may use, e.g. "
        "'trainyard/*,registry.example.com/ml/*' (default: any).",
    )
    default_max_retries: int = Field(default=3, ge=0, le=100)
    default_disk: str | None = Field(
        default="100g",
        description="Disk budget of jobs that give no resources.disk: /outputs plus what the "
        "job writes in its container (empty: no budget).",
    )
    default_stall_timeout_seconds: int | None = Field(
        default=None,
        ge=10,
        description="Stop jobs that print nothing for this long (outcome stalled) unless they "
        "set stall_timeout_seconds; unset: off.",
    )
    workdir_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        le=1024**3,
        description="Largest workdir upload (gzip-compressed tar); its unpacked size may be 8x.",
    )

    # --- agent ---
    agent_listen: str = Field(
        default="",
        description="host:port where the agent serves its jobs' logs and outputs to the API "
        "(empty: it does not; the API then reads them only from shared storage).",
    )
    agent_url: str = Field(
        default="",
        description="How the API reaches that endpoint (default: http://<agent_listen>).",
    )
    agent_secret: SecretStr | None = Field(
        default=None,
        description="Shared secret between the API and the agents' endpoints (required for "
        "them; at least 16 characters).",
    )
    agent_id: str = Field(default_factory=_default_agent_id, min_length=1, max_length=64)
    max_concurrent_jobs: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    gpus: str = Field(default="auto", description="'auto', 'none', or device ids like '0,1,2,3'.")
    memory_reserve: str = "1g"
    # Renewed every second, so a lease must outlast a few renewals.
    lease_seconds: float = Field(default=60.0, ge=3)
    heartbeat_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often an agent reports itself and checks others' leases.",
    )
    starvation_seconds: float | None = Field(
        default=600.0,
        ge=0,
        description="Once the job at the head of the queue has waited this long, smaller jobs stop "
        "backfilling around it on an agent where it could run.",
    )
    reconcile_interval: float = Field(
        default=30.0, gt=0, description="How often the agent re-checks engine against database."
    )
    poll_interval: float = Field(
        default=1.0,
        gt=0,
        description="How often an agent looks for work nobody announced. Submits wake the "
        "embedded agent in-process and, on PostgreSQL, every agent through LISTEN/NOTIFY; this "
        "poll covers SQLite agents in other processes and missed notifications.",
    )
    prepare_next: bool = Field(
        default=True,
        description="While every slot is busy, create the container of the job the next claim "
        "will most likely take (not started, no resources held), so a freed slot goes straight "
        "to the start. Jobs with GPUs or a workdir are not prepared.",
    )
    stop_grace_seconds: float = Field(default=30.0, ge=0)
    detach_on_stop: bool = Field(
        default=False,
        description="On SIGTERM, leave running containers alone (an upgrade): the next agent "
        "with this id re-attaches them. SIGUSR1 always detaches.",
    )
    detach_lease_seconds: float = Field(
        default=900.0,
        ge=10,
        description="How long a detached agent's leases stay valid for its successor.",
    )
    container_user: str = "1000:1000"
    pids_limit: int = Field(default=4096, ge=16)
    read_only_rootfs: bool = Field(
        default=False,
        description="Run containers with a read-only root filesystem; /tmp (a tmpfs within the "
        "job's memory limit) and /outputs stay writable.",
    )
    disk_check_seconds: float = Field(
        default=15.0,
        gt=0,
        description="How often the agent measures each running job's disk use against its budget.",
    )
    docker_timeout: float = Field(default=60.0, gt=0)
    retry_backoff_seconds: float = Field(default=5.0, ge=0)
    retry_backoff_max_seconds: float = Field(default=600.0, ge=0)

    # --- job logs ---
    max_followers: int = Field(
        default=256,
        ge=1,
        le=10_000,
        description="Log followers (follow=true, SSE) served at once; past it, 503.",
    )
    log_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    log_backup_count: int = Field(default=5, ge=0)
    engine_log_max_size: str = Field(
        default="512m",
        description="Cap of the engine's own json-file copy of a container's output (per file); "
        "the job log is the agent's copy. See README: logs.",
    )
    engine_log_max_files: int = Field(default=2, ge=1, le=100)
    metrics_max_points: int = Field(
        default=DEFAULT_MAX_POINTS,
        ge=MIN_MAX_POINTS,
        le=MAX_MAX_POINTS,
        description="Training-metric points kept per key per job; older ones are thinned.",
    )
    log_stall_seconds: float = Field(
        default=30.0,
        gt=0,
        description="After a container exits, a log stream that delivers nothing for this long "
        "is reopened from the last line written (the log is never cut short silently).",
    )

    @field_validator("default_memory", "memory_reserve", "engine_log_max_size")
    @classmethod
    def _memory_parses(cls, value: str) -> str:
        parse_memory(value)
        return value

    @field_validator("default_disk")
    @classmethod
    def _disk_parses(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_memory(value)
        return value

    @field_validator("gpus")
    @classmethod
    def _gpus_parse(cls, value: str) -> str:
        value = value.strip()
        if value in ("auto", "none", ""):
            return value or "none"
        ids = [part.strip() for part in value.split(",")]
        if not all(part.isdigit() for part in ids) or len(set(ids)) != len(ids):
            raise ValueError(
                "TRAINYARD_GPUS must be 'auto', 'none' or distinct device ids like '0,1'"
            )
        return ",".join(ids)

    @model_validator(mode="after")
    def _safe_bind(self) -> Settings:
        # Listening beyond this machine takes two things: this explicit flag, and (checked at
        # start, where the database is known: agent.core.auth.bind_refusal) an API token.
        # A PydanticCustomError, not a ValueError: its message is exactly this one line (no
        # "Value error, " prefix), for run.py to print as `error.errors()[0]["msg"]`.
        if self.host not in LOOPBACK_HOSTS and not self.allow_public_bind:
            raise PydanticCustomError(
                "unsafe_bind",
                "TRAINYARD_HOST must be a loopback address (127.0.0.1, localhost or ::1), not "
                "{host}; to serve other machines set TRAINYARD_ALLOW_PUBLIC_BIND=1 and create an "
                "API token (python run.py token create --user NAME)",
                {"host": repr(self.host)},
            )
        return self

    @model_validator(mode="after")
    def _workers_without_agent(self) -> Settings:
        if self.api_workers > 1 and self.mode == "all":
            raise PydanticCustomError(
                "api_workers",
                "TRAINYARD_API_WORKERS above 1 needs `python run.py api` (agents run apart, "
                "as `python run.py agent`): the embedded agent is one per host",
            )
        return self

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_parse(cls, value: str) -> str:
        hosts = [part.strip().lower() for part in value.split(",") if part.strip()]
        for host in hosts:
            wildcard = host.startswith("*.") and "*" not in host[2:] and len(host) > 2
            if host != "*" and not wildcard and ("*" in host or "/" in host or " " in host):
                raise ValueError(
                    f"TRAINYARD_ALLOWED_HOSTS: {host!r} is not a host name; use names like "
                    "trainyard.example.com, '*.example.com' or '*'"
                )
        return ",".join(hosts)

    @field_validator("cors_origins")
    @classmethod
    def _origins_parse(cls, value: str) -> str:
        origins = [part.strip().rstrip("/") for part in value.split(",") if part.strip()]
        for origin in origins:
            if re.fullmatch(r"https?://[^/\s*]+", origin) is None:
                raise ValueError(
                    f"TRAINYARD_CORS_ORIGINS: {origin!r} must be an exact origin like "
                    "https://dash.example.com (scheme and host, no path, no '*')"
                )
        return ",".join(origins)

    @property
    def trusted_hosts(self) -> list[str]:
        """Host header names the API answers: loopback, its own host and the configured ones."""
        host = self.host.lower()
        own = [] if host in ("0.0.0.0", "::", "") else [f"[{host}]" if ":" in host else host]  # noqa: S104
        extra = [h for h in self.allowed_hosts.split(",") if h]
        names = [*LOOPBACK_HOSTS, "[::1]", *own, *extra]
        return list(dict.fromkeys(names))

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin for origin in self.cors_origins.split(",") if origin]

    @model_validator(mode="after")
    def _agent_endpoint(self) -> Settings:
        if self.agent_listen:
            host, sep, port = self.agent_listen.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("TRAINYARD_AGENT_LISTEN must be host:port, e.g. 0.0.0.0:8001")
            if self.agent_secret is None:
                raise ValueError(
                    "TRAINYARD_AGENT_LISTEN needs TRAINYARD_AGENT_SECRET: the endpoint serves "
                    "job logs and outputs only to the API"
                )
        if self.agent_secret is not None and len(self.agent_secret.get_secret_value()) < 16:
            raise ValueError("TRAINYARD_AGENT_SECRET must be at least 16 characters")
        return self

    @property
    def allowed_image_patterns(self) -> list[str]:
        return [p.strip() for p in self.allowed_images.split(",") if p.strip()] or ["*"]

    @property
    def agent_endpoint_url(self) -> str | None:
        """The URL the agent advertises in the registry for its endpoint."""
        if not self.agent_listen:
            return None
        return self.agent_url or f"http://{self.agent_listen}"

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'trainyard.db').resolve()}"

    @property
    def job_log_dir(self) -> Path:
        return self.log_dir

    @property
    def workdirs_dir(self) -> Path:
        """Unpacked workdirs (read-only at /workspace in the jobs that name them)."""
        return self.data_dir / "workdirs"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @cached_property
    def default_memory_bytes(self) -> int:
        return parse_memory(self.default_memory)

    @cached_property
    def default_disk_bytes(self) -> int | None:
        return parse_memory(self.default_disk) if self.default_disk else None

    @cached_property
    def engine_log_max_bytes(self) -> int:
        return parse_memory(self.engine_log_max_size)

    @cached_property
    def memory_reserve_bytes(self) -> int:
        return parse_memory(self.memory_reserve)
