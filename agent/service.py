"""What users can ask of Trainyard: submit, cancel, get, list, stats, events, logs, health."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.config import Settings
from agent.core.errors import InvalidJobSpec, RuntimeUnavailable
from agent.core.jobs import JobSpec, JobStatus
from agent.core.records import AgentInfo, Event, Job, NewJob, Stats
from agent.core.units import format_memory, parse_memory
from agent.db.engine import Database
from agent.db.queue import JobQueue
from agent.joblog import follow_positioned, job_log_path, tail
from agent.metrics import JOBS_REJECTED, JOBS_SUBMITTED, QUEUE_DEPTH
from agent.runtime.docker_runner import DockerRunner
from agent.worker.agent import Agent

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
    ) -> None:
        self.settings = settings
        self.db = db
        self.queue = queue
        self.runtime = runtime
        self.agent = agent

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
        """Refuse at once what no live agent could ever run, rather than queue it forever.

        With no live agent registered (agents may join later) the job is accepted; it then
        shows why it waits (`unschedulable_reason`)."""
        reason = self.unschedulable_reason(new.memory_bytes, new.cpus, new.gpus)
        if reason is not None:
            raise InvalidJobSpec(reason)

    def live_agents(self) -> list[AgentInfo]:
        limit = timedelta(seconds=max(3 * self.settings.heartbeat_seconds, 15))
        now = datetime.now(UTC)
        return [
            a for a in self.queue.agents() if a.stopped_at is None and now - a.heartbeat_at <= limit
        ]

    def unschedulable_reasons(self, jobs: list[Job]) -> dict[str, str]:
        """Why each queued job cannot run on any live agent (only those that cannot)."""
        queued = [j for j in jobs if j.status is JobStatus.QUEUED]
        if not queued:
            return {}
        agents = self.live_agents()
        reasons = {}
        for job in queued:
            reason = self.unschedulable_reason(job.memory_bytes, job.cpus, job.gpus, agents)
            if reason is not None:
                reasons[job.id] = reason
        return reasons

    def unschedulable_reason(
        self, memory_bytes: int, cpus: float, gpus: int, agents: list[AgentInfo] | None = None
    ) -> str | None:
        agents = self.live_agents() if agents is None else agents
        if not agents:
            return None
        if any(_fits(a, memory_bytes, cpus, gpus) for a in agents):
            return None
        problems = []
        if memory_bytes > max(a.memory_bytes for a in agents):
            problems.append(
                f"resources.memory {format_memory(memory_bytes)} is more than any agent offers "
                f"(largest: {format_memory(max(a.memory_bytes for a in agents))})"
            )
        if cpus > max(a.cpus for a in agents):
            problems.append(
                f"resources.cpus {cpus:g} is more than any agent's "
                f"(largest: {max(a.cpus for a in agents):g})"
            )
        if gpus > max(len(a.gpu_ids) for a in agents):
            problems.append(
                f"resources.gpus {gpus} is more than any agent has "
                f"(largest: {max(len(a.gpu_ids) for a in agents)})"
            )
        if not problems:  # each fits some agent, but no single agent has all of it
            offers = ", ".join(
                f"{a.id}: {format_memory(a.memory_bytes)}, {a.cpus:g} cpus, {len(a.gpu_ids)} gpus"
                for a in agents
            )
            problems.append(f"no single agent offers all of it ({offers})")
        return "; ".join(problems)

    def cancel(self, job_id: str, *, actor: str = "api") -> Job:
        job = self.queue.request_cancel(job_id, actor)
        if self.agent is not None and job.status.is_active:
            self.agent.cancel(job_id, actor)
        return job

    def get(self, job_id: str) -> Job:
        return self.queue.get(job_id)

    def agents(self) -> list[AgentInfo]:
        return self.queue.agents()

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
        for position, line in self.log_follow_positioned(job_id, from_lines=from_lines):
            if position:
                yield line

    def log_follow_positioned(
        self,
        job_id: str,
        *,
        from_lines: int,
        after: tuple[str, int] | None = None,
        heartbeat: float | None = None,
    ) -> Iterator[tuple[str, str]]:
        """(position, line) as lines are written (see logs.follow_positioned); ends once the
        job is final and its log drained."""
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

        return follow_positioned(
            job_log_path(self.settings.log_dir, job_id),
            from_lines=from_lines,
            after=after,
            stop=stop,
            heartbeat=heartbeat,
        )

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


def _fits(agent: AgentInfo, memory_bytes: int, cpus: float, gpus: int) -> bool:
    return memory_bytes <= agent.memory_bytes and cpus <= agent.cpus and gpus <= len(agent.gpu_ids)
