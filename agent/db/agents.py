"""The agent registry: who is there, what each offers, and what each holds now."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from agent.core.records import AgentInfo
from agent.core.scheduling import Capacity
from agent.db import mapping
from agent.db.engine import Database
from agent.db.models import agents, attempts, gpu_holds

# Prebuilt: every batch of submits reads the agents (what could ever run where).
_ALL_AGENTS = select(agents).order_by(agents.c.id)


class AgentRegistry:
    db: Database
    clock: Callable[[], datetime]

    def register_agent(
        self, agent_id: str, hostname: str, capacity: Capacity, *, endpoint: str | None = None
    ) -> None:
        now = self.clock()
        values: dict[str, Any] = {
            "hostname": hostname,
            "started_at": now,
            "heartbeat_at": now,
            "stopped_at": None,
            "slots": capacity.slots,
            "memory_bytes": capacity.memory_bytes,
            "cpus": capacity.cpus,
            "gpu_ids": list(capacity.gpu_ids),
            "engine_error": None,
            "endpoint": endpoint,
        }
        with self.db.begin() as conn:
            updated = conn.execute(update(agents).where(agents.c.id == agent_id).values(values))
            if updated.rowcount == 0:
                conn.execute(insert(agents).values(id=agent_id, **values))

    def heartbeat(
        self, agent_id: str, *, engine_error: str | None, engine_version: str | None = None
    ) -> None:
        values: dict[str, Any] = {
            "heartbeat_at": self.clock(),
            "engine_error": engine_error,
            "stopped_at": None,
        }
        if engine_version is not None:
            values["engine_version"] = engine_version
        with self.db.begin() as conn:
            conn.execute(update(agents).where(agents.c.id == agent_id).values(values))

    def agent_stopped(self, agent_id: str) -> None:
        with self.db.begin() as conn:
            conn.execute(
                update(agents).where(agents.c.id == agent_id).values(stopped_at=self.clock())
            )

    def agent_endpoint(self, agent_id: str) -> str | None:
        """Where an agent serves its jobs' files (one row, no ledger sums)."""
        with self.db.read() as conn:
            return conn.scalar(select(agents.c.endpoint).where(agents.c.id == agent_id))

    def agents(self) -> list[AgentInfo]:
        """Every registered agent, what it offers and what it holds now (the ledger's sums)."""
        return self._agents(holdings=True)

    def agent_offers(self) -> list[AgentInfo]:
        """Every registered agent and what it offers; what it holds reads as nothing. Enough
        to know what could ever run where, in one small query (a submit asks this)."""
        return self._agents(holdings=False)

    def _agents(self, *, holdings: bool) -> list[AgentInfo]:
        with self.db.read() as conn:
            held: dict[str, tuple[int, int, float]] = {}
            holders: dict[str, dict[str, str]] = {}
            if holdings:
                for agent_id, count, memory, cpus in conn.execute(
                    select(
                        attempts.c.agent_id,
                        func.count(),
                        func.coalesce(func.sum(attempts.c.memory_bytes), 0),
                        func.coalesce(func.sum(attempts.c.cpus), 0.0),
                    )
                    .where(attempts.c.released_at.is_(None))
                    .group_by(attempts.c.agent_id)
                ):
                    held[agent_id] = (int(count), int(memory), float(cpus))
                for agent_id, gpu_id, job_id in conn.execute(
                    select(gpu_holds.c.agent_id, gpu_holds.c.gpu_id, gpu_holds.c.job_id)
                ):
                    holders.setdefault(agent_id, {})[gpu_id] = job_id
            return offers(conn, held, holders)


def offers(
    conn: Connection,
    held: Mapping[str, tuple[int, int, float]] | None = None,
    holders: Mapping[str, dict[str, str]] | None = None,
) -> list[AgentInfo]:
    """Every registered agent, what it offers, and what `held` and `holders` say it holds
    (nothing when not given)."""
    held, holders = held or {}, holders or {}
    return [
        mapping.agent(
            row,
            running=held.get(row["id"], (0, 0, 0.0))[0],
            held_memory_bytes=held.get(row["id"], (0, 0, 0.0))[1],
            held_cpus=held.get(row["id"], (0, 0, 0.0))[2],
            gpu_holders=holders.get(row["id"], {}),
        )
        for row in conn.execute(_ALL_AGENTS).mappings()
    ]
