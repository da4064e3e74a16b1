"""What users can ask of Trainyard: submit, cancel, get, list, stats, events, logs, health."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from agent.config import Settings
from agent.db.engine import Database
from agent.db.queue import JobQueue
from agent.errors import InvalidJobSpec, RuntimeUnavailable
from agent.gpus import Capacity
from agent.jobs import JobSpec, JobStatus
from agent.logs import follow, job_log_path, tail
from agent.metrics import JOBS_REJECTED, JOBS_SUBMITTED, QUEUE_DEPTH
from agent.records import Event, Job, NewJob, Stats
from agent.runtime.docker_runner import DockerRunner
from agent.units import format_memory, parse_memory
from agent.worker import Agent

FOLLOW_STATUS_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class Health:
    ok: bool
    checks: dict[str, dict[str, Any]]


class TrainyardService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        queue: JobQueue,
        *,
        runtime: DockerRunner | None = None,
        agent: Agent | None = None,
        capacity: Capacity | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.queue = queue
        self.runtime = runtime
        self.agent = agent
        self.capacity = capacity

    # --- jobs ------------------------------------------------------------------------------

    def submit(self, spec: JobSpec, *, actor: str = "api") -> Job:
        new = self.resolve(spec)
        try:
            self._check_fits(new)
            job = self.queue.submit(new, max_queued=self.settings.max_queued, actor=actor)
        except Exception as exc:
            JOBS_REJECTED.labels(type(exc).__name__).inc()
            raise
        JOBS_SUBMITTED.inc()
        if self.agent is not None:
            self.agent.wake()
        return job

    def resolve(self, spec: JobSpec) -> NewJob:
        """Fill every default from settings."""
        resources = spec.resources
        image = spec.image or self.settings.default_image
        return NewJob(
            name=spec.name or (image.rsplit("/", 1)[-1].split("@")[0]),
            image=image,
            command=spec.command,
            params=spec.params,
            env=spec.env,
            memory_bytes=parse_memory(resources.memory)
            if resources.memory
            else self.settings.default_memory_bytes,
            cpus=resources.cpus if resources.cpus is not None else self.settings.default_cpus,
            gpus=resources.gpus,
            timeout_seconds=spec.timeout_seconds
            if spec.timeout_seconds is not None
            else self.settings.default_timeout_seconds,
            max_retries=spec.max_retries
            if spec.max_retries is not None
            else self.settings.default_max_retries,
            priority=spec.priority,
            retry_on=[o.value for o in spec.retry_on] if spec.retry_on is not None else None,
            non_retryable_exit_codes=sorted(set(spec.non_retryable_exit_codes)),
        )

    def _check_fits(self, new: NewJob) -> None:
        """Refuse at once what the agent could never run, rather than queue it forever."""
        cap = self.capacity
        if cap is None:
            return
        problems = []
        if new.memory_bytes > cap.memory_bytes:
            problems.append(
                f"resources.memory {format_memory(new.memory_bytes)} is more than the agent "
                f"offers ({format_memory(cap.memory_bytes)})"
            )
        if new.cpus > cap.cpus:
            problems.append(f"resources.cpus {new.cpus:g} is more than the agent's {cap.cpus:g}")
        if new.gpus > len(cap.gpu_ids):
            problems.append(
                f"resources.gpus {new.gpus} is more than the agent has ({len(cap.gpu_ids)})"
            )
        if problems:
            raise InvalidJobSpec("; ".join(problems))

    def cancel(self, job_id: str, *, actor: str = "api") -> Job:
        job = self.queue.request_cancel(job_id, actor)
        if self.agent is not None and job.status.is_active:
            self.agent.cancel(job_id, actor)
        return job

    def get(self, job_id: str) -> Job:
        return self.queue.get(job_id)

    def list_jobs(
        self, *, status: JobStatus | None, limit: int, offset: int
    ) -> tuple[list[Job], int]:
        return self.queue.list_jobs(status=status, limit=limit, offset=offset)

    def events(self, job_id: str) -> list[Event]:
        return self.queue.events(job_id)

    def stats(self) -> Stats:
        stats = self.queue.stats()
        QUEUE_DEPTH.set(stats.counts.get("queued", 0))
        return stats

    # --- logs ------------------------------------------------------------------------------

    def log_tail(self, job_id: str, lines: int) -> list[str]:
        self.queue.get(job_id)  # 404 for unknown ids
        return tail(job_log_path(self.settings.log_dir, job_id), lines)

    def log_follow(self, job_id: str, *, from_lines: int) -> Iterator[str]:
        """Lines as they are written; ends once the job is final and its log drained."""
        self.queue.get(job_id)
        last_check = 0.0
        finished = False

        def stop() -> bool:
            nonlocal last_check, finished
            now = time.monotonic()
            if not finished and now - last_check >= FOLLOW_STATUS_CHECK_SECONDS:
                last_check = now
                job = self.queue.get(job_id)
                # Final, and the agent has closed the file (it writes its last line on removal).
                finished = job.status.is_final and job_id not in self._running_here()
            return finished

        return follow(job_log_path(self.settings.log_dir, job_id), from_lines=from_lines, stop=stop)

    def _running_here(self) -> list[str]:
        return self.agent.running_job_ids() if self.agent is not None else []

    # --- health ----------------------------------------------------------------------------

    def health(self) -> Health:
        checks: dict[str, dict[str, Any]] = {}
        try:
            self.db.ping()
            checks["database"] = {"ok": True, "dialect": self.db.dialect}
        except Exception as exc:
            checks["database"] = {"ok": False, "error": f"database unreachable: {exc}"}
        if self.runtime is not None:
            try:
                checks["docker"] = {"ok": True, "version": self.runtime.ping()}
            except RuntimeUnavailable as exc:
                checks["docker"] = {"ok": False, "error": str(exc)}
        if self.agent is not None:
            checks["agent"] = {
                "ok": True,
                "id": self.settings.agent_id,
                "running": len(self.agent.running_job_ids()),
                "slots": self.agent.capacity.slots,
            }
        return Health(ok=all(check["ok"] for check in checks.values()), checks=checks)
