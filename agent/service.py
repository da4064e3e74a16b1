"""What users can ask of Trainyard: submit, cancel, get, list, stats, events, logs, health."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from agent.config import Settings
from agent.core.admission import live_agents, resolve, unschedulable_reason
from agent.core.errors import InvalidJobSpec, InvalidRequest, RuntimeUnavailable
from agent.core.jobs import JobSpec, JobStatus
from agent.core.records import AgentInfo, Event, Job, Stats
from agent.db.engine import Database
from agent.db.queue import JobQueue
from agent.jobfiles import LocalJobFiles, OutputListing
from agent.joblog import parse_position
from agent.metrics import JOBS_REJECTED, JOBS_SUBMITTED, QUEUE_DEPTH
from agent.remote import AgentClient, AgentUnreachable

FOLLOW_STATUS_CHECK_SECONDS = 1.0


class AgentHandle(Protocol):
    """What the service needs of an agent in its own process (the worker's Agent is one):
    a wake-up on submit, a fast cancel, and what it runs. Other agents are reached through
    the database (LISTEN/NOTIFY and polls)."""

    def wake(self) -> None: ...

    def cancel(self, job_id: str, actor: str) -> bool: ...

    def running_job_ids(self) -> list[str]: ...

    def health(self) -> dict[str, Any]: ...


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
        engine_ping: Callable[[], str] | None = None,
        agent: AgentHandle | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.queue = queue
        self.engine_ping = engine_ping
        self.agent = agent
        self.files = LocalJobFiles(settings)
        self._clients: dict[str, AgentClient] = {}

    # --- jobs ------------------------------------------------------------------------------

    def submit(self, spec: JobSpec, *, actor: str = "api") -> Job:
        new = resolve(spec, self.settings)
        try:
            reason = unschedulable_reason(new.memory_bytes, new.cpus, new.gpus, self.live_agents())
            if reason is not None:  # no live agent could ever run it: refuse, do not queue
                raise InvalidJobSpec(reason)
            job = self.queue.submit(new, max_queued=self.settings.max_queued, actor=actor)
        except Exception as exc:
            JOBS_REJECTED.labels(type(exc).__name__).inc()
            raise
        JOBS_SUBMITTED.inc()
        if self.agent is not None:
            self.agent.wake()
        return job

    def live_agents(self) -> list[AgentInfo]:
        return live_agents(
            self.queue.agents(),
            now=datetime.now(UTC),
            heartbeat_seconds=self.settings.heartbeat_seconds,
        )

    def unschedulable_reasons(self, jobs: list[Job]) -> dict[str, str]:
        """Why each queued job cannot run on any live agent (only those that cannot)."""
        queued = [j for j in jobs if j.status is JobStatus.QUEUED]
        if not queued:
            return {}
        agents = self.live_agents()
        reasons = {}
        for job in queued:
            reason = unschedulable_reason(job.memory_bytes, job.cpus, job.gpus, agents)
            if reason is not None:
                reasons[job.id] = reason
        return reasons

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
        holder = self._holder(self.queue.get(job_id))  # 404 for unknown ids
        if holder is not None:
            return holder.tail(job_id, lines)
        return self.files.tail(job_id, lines)

    def log_follow(self, job_id: str, *, from_lines: int) -> Iterator[str]:
        """Lines as they are written; ends once the job is final and its log drained."""
        for position, line in self.log_follow_positioned(job_id, from_lines=from_lines):
            if position and position != "gap":
                yield line

    def log_follow_positioned(
        self,
        job_id: str,
        *,
        from_lines: int,
        after: str | None = None,
        heartbeat: float | None = None,
    ) -> Iterator[tuple[str, str]]:
        """(position, line) as lines are written (see joblog.follow_positioned), from just
        after the position `after` if given; ends once the job is final and its log drained."""
        position = parse_position(after) if after else None
        if after and position is None:
            raise InvalidRequest(
                "Last-Event-ID is not a log position of this service; reconnect without it"
            )
        holder = self._holder(self.queue.get(job_id))
        if holder is not None:
            return holder.follow(job_id, from_lines=from_lines, after=after)
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

        return self.files.follow(
            job_id, from_lines=from_lines, after=position, stop=stop, heartbeat=heartbeat
        )

    def _running_here(self) -> list[str]:
        return self.agent.running_job_ids() if self.agent is not None else []

    # --- outputs ---------------------------------------------------------------------------

    def outputs(self, job_id: str) -> OutputListing:
        holder = self._holder(self.queue.get(job_id), kind="outputs")
        if holder is not None:
            return holder.outputs(job_id)
        if not self.files.has_outputs(job_id):
            return OutputListing([], truncated=False)
        return self.files.outputs(job_id)

    def output(self, job_id: str, path: str) -> Path | AgentClient:
        """The local file, or the client of the agent that has it (see AgentClient.download)."""
        holder = self._holder(self.queue.get(job_id), kind="outputs")
        if holder is not None:
            return holder
        return self.files.output_path(job_id, path)

    def _holder(self, job: Job, *, kind: str = "log") -> AgentClient | None:
        """The client of the agent whose host has this job's files; None when they are here
        (the embedded agent ran it, or the directory is shared storage)."""
        agent_id = job.attempts[-1].agent_id if job.attempts else None
        here = self.files.has_log(job.id) if kind == "log" else self.files.has_outputs(job.id)
        if (
            agent_id is None
            or here
            or (self.agent is not None and agent_id == self.settings.agent_id)
        ):
            return None
        secret = self.settings.agent_secret
        endpoint = next((a.endpoint for a in self.queue.agents() if a.id == agent_id), None)
        if endpoint is None or secret is None:
            raise AgentUnreachable(
                f"this job ran on agent {agent_id}, whose files are on its own host; that agent "
                "serves them only with TRAINYARD_AGENT_LISTEN and the same TRAINYARD_AGENT_SECRET "
                "as this API (or share TRAINYARD_LOG_DIR and TRAINYARD_DATA_DIR between hosts)"
            )
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = AgentClient(
                endpoint, secret.get_secret_value(), agent_id=agent_id
            )
        return client

    # --- health ----------------------------------------------------------------------------

    def health(self) -> Health:
        checks: dict[str, dict[str, Any]] = {}
        try:
            self.db.ping()
            checks["database"] = {"ok": True, "dialect": self.db.dialect}
        except Exception as exc:
            checks["database"] = {"ok": False, "error": f"database unreachable: {exc}"}
        if self.engine_ping is not None:
            try:
                checks["docker"] = {"ok": True, "version": self.engine_ping()}
            except RuntimeUnavailable as exc:
                checks["docker"] = {"ok": False, "error": str(exc)}
        if self.agent is not None:
            checks["agent"] = self.agent.health()
        elif checks["database"]["ok"]:
            # An API-only process: agents (and their engines) are elsewhere; say how many live.
            live = self.live_agents()
            checks["agents"] = {"ok": True, "live": len(live), "ids": [a.id for a in live]}
        return Health(ok=all(check["ok"] for check in checks.values()), checks=checks)
