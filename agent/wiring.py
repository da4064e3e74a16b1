"""Build the pieces once, in one place: database, queue, runtime, agent, service."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from agent.config import Settings
from agent.core.scheduling import Capacity
from agent.db.engine import Database
from agent.db.migrate import upgrade
from agent.db.queue import JobQueue
from agent.endpoint import AgentEndpoint
from agent.runtime.base import Runtime
from agent.service import TrainyardService
from agent.worker.agent import Agent
from agent.worker.host import local_capacity

log = logging.getLogger("trainyard")

DETACH_REQUESTED = threading.Event()
"""Set by a signal (run.py: SIGUSR1): the next stop of this process detaches."""


@dataclass
class System:
    settings: Settings
    db: Database
    queue: JobQueue
    runtime: Runtime | None
    agent: Agent | None
    service: TrainyardService
    endpoint: AgentEndpoint | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        with_agent: bool,
        migrate: bool = True,
        capacity: Capacity | None = None,
    ) -> System:
        if migrate:
            upgrade(settings.resolved_database_url)
        db = Database(settings.resolved_database_url)
        queue = JobQueue(db)
        runtime: Runtime | None = None
        agent = None
        if with_agent:
            # Only a process with an agent builds a Docker client: the API needs no engine.
            from agent.runtime.docker_runner import DockerRunner  # noqa: PLC0415

            runtime = DockerRunner(timeout=settings.docker_timeout)
            capacity = capacity or local_capacity(
                slots=settings.max_concurrent_jobs,
                gpus_setting=settings.gpus,
                memory_reserve_bytes=settings.memory_reserve_bytes,
            )
            agent = Agent(settings, queue, runtime, capacity)
        service = TrainyardService(
            settings,
            db,
            queue,
            engine_ping=runtime.ping if runtime is not None else None,
            agent=agent,
        )
        endpoint = AgentEndpoint(settings, service) if agent and settings.agent_listen else None
        return cls(settings, db, queue, runtime, agent, service, endpoint)

    def start(self) -> None:
        self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        if self.endpoint is not None:
            self.endpoint.start()
        if self.agent is not None:
            self.agent.start()

    def close(self, *, timeout: float | None = None, detach: bool | None = None) -> None:
        """Stop. An agent in detach mode (TRAINYARD_DETACH_ON_STOP, or SIGUSR1 to run.py)
        leaves its running containers alone for the next agent with its id."""
        if self.agent is not None:
            if detach is None:
                detach = self.settings.detach_on_stop or DETACH_REQUESTED.is_set()
            self.agent.stop(timeout=timeout, detach=detach)
        elif self.runtime is not None:
            self.runtime.close()
        if self.endpoint is not None:
            self.endpoint.stop()
        self.db.dispose()
