"""Which queued job fits what an agent has free — pure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Demand:
    job_id: str
    memory_bytes: int
    cpus: float
    gpus: int


@dataclass(frozen=True)
class Free:
    slots: int
    memory_bytes: int
    cpus: float
    gpu_ids: tuple[str, ...]

    def fits(self, demand: Demand) -> bool:
        return (
            self.slots >= 1
            and demand.memory_bytes <= self.memory_bytes
            and demand.cpus <= self.cpus + 1e-9
            and demand.gpus <= len(self.gpu_ids)
        )


def pick(candidates: Iterable[Demand], free: Free) -> Demand | None:
    """The first candidate (already in priority order) that fits what is free."""
    for demand in candidates:
        if free.fits(demand):
            return demand
    return None


def assign_gpus(free_ids: Sequence[str], count: int) -> tuple[str, ...]:
    """Exactly `count` device ids, lowest first, so placement is predictable."""
    if count > len(free_ids):
        raise ValueError(f"asked for {count} GPUs, {len(free_ids)} free")
    return tuple(sorted(free_ids, key=lambda i: (len(i), i))[:count])
