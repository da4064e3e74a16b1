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
    waiting_since: float = 0.0  # epoch seconds: when it (re)entered the queue


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


def pick(
    candidates: Iterable[Demand],
    free: Free,
    *,
    capacity: Free | None = None,
    now: float = 0.0,
    starvation_seconds: float | None = None,
) -> Demand | None:
    """The job to start now, from candidates already in priority order (then oldest first).

    The head is the first candidate this agent could ever run (it fits `capacity`). If it fits
    what is free, it starts. If not, a later, smaller job may run in the gap (backfill) — unless
    the head has waited `starvation_seconds` or more: then nothing new starts here until the
    head fits, so a big job is never starved by a stream of small ones.
    """
    runnable = (d for d in candidates if capacity is None or capacity.fits(d))
    head = next(runnable, None)  # lazily: stop reading candidates at the first fit
    if head is None:
        return None
    if free.fits(head):
        return head
    if starvation_seconds is not None and now - head.waiting_since >= starvation_seconds:
        return None
    for demand in runnable:
        if free.fits(demand):
            return demand
    return None


def assign_gpus(free_ids: Sequence[str], count: int) -> tuple[str, ...]:
    """Exactly `count` device ids, lowest first, so placement is predictable."""
    if count > len(free_ids):
        raise ValueError(f"asked for {count} GPUs, {len(free_ids)} free")
    return tuple(sorted(free_ids, key=lambda i: (len(i), i))[:count])


@dataclass(frozen=True)
class Capacity:
    """Everything one agent may hand out at once."""

    slots: int
    memory_bytes: int
    cpus: float
    gpu_ids: tuple[str, ...]

    @property
    def whole(self) -> Free:
        """Everything, as if nothing were held: what could ever run here."""
        return Free(self.slots, self.memory_bytes, self.cpus, self.gpu_ids)

    def remaining(self, *, count: int, memory_bytes: int, cpus: float, gpus: set[str]) -> Free:
        """What is left once `count` attempts holding this much are taken out."""
        return Free(
            slots=self.slots - count,
            memory_bytes=self.memory_bytes - memory_bytes,
            cpus=self.cpus - cpus,
            gpu_ids=tuple(gpu for gpu in self.gpu_ids if gpu not in gpus),
        )
