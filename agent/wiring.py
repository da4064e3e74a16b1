"""Build the pieces once, in one place: database, queue, runtime, agent, service."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.config import Settings
from agent.core.scheduling import Capacity
from agent.db.engine import Database
from agent.db.migrate import upgrade
from agent.db.queue import JobQueue
from agent.runtime.docker_runner import DockerRunner
from agent.service import TrainyardService
from agent.worker.agent import Agent
from agent.worker.host import local_capacity

log = logging.getLogger("trainyard")


@dataclass
class System:
    settings: Settings
    db: Database
    queue: JobQueue
    runtime: DockerRunner | None
    agent: Agent | None
    service: TrainyardService

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
        runtime = DockerRunner(timeout=settings.docker_timeout)
        agent = None
        if with_agent:
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
            engine_ping=runtime.ping,
            agent=agent,
        )
        return cls(settings, db, queue, runtime, agent, service)

    def start(self) -> None:
        self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        if self.agent is not None:
            self.agent.start()

    def close(self, *, timeout: float | None = None) -> None:
        if self.agent is not None:
            self.agent.stop(timeout=timeout)
        elif self.runtime is not None:
            self.runtime.close()
        self.db.dispose()
