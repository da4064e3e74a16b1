"""The queue: every SQL statement about jobs, attempts and agents, behind one object.

Its parts live beside it, one job each: `jobstore` (submit, read, cancel, delete), `claims`
(taking the next job), `attempts` (an attempt after its claim: container, result, lease,
release), `agents` (the registry), with `mapping` (rows ↔ records) and `transitions` (the
compare-and-set every status change goes through). Hot paths are SQLAlchemy Core."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from agent.db.agents import AgentRegistry
from agent.db.attempts import Attempts
from agent.db.claims import Claims
from agent.db.engine import Database
from agent.db.jobstore import JobStore


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobQueue(JobStore, Claims, Attempts, AgentRegistry):
    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock
        JobStore.__init__(self)
