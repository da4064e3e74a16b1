"""What a submission becomes and whether any live agent could ever run it — pure."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from datetime import datetime, timedelta

from agent.config import Settings
from agent.core.jobs import JobSpec
from agent.core.records import AgentInfo, NewJob
from agent.core.scheduling import Demand, Free
from agent.core.units import human_size, parse_memory


def resolve(spec: JobSpec, settings: Settings) -> NewJob:
    """The spec with every default filled from settings."""
    resources = spec.resources
    image = spec.image or settings.default_image
    memory = parse_memory(resources.memory) if resources.memory else settings.default_memory_bytes
    return NewJob(
        name=spec.name or (image.rsplit("/", 1)[-1].split("@")[0]),
        image=image,
        command=spec.command,
        params=spec.params,
        env=spec.env,
        memory_bytes=memory,
        cpus=resources.cpus if resources.cpus is not None else settings.default_cpus,
        gpus=resources.gpus,
        timeout_seconds=spec.timeout_seconds
        if spec.timeout_seconds is not None
        else settings.default_timeout_seconds,
        max_retries=spec.max_retries
        if spec.max_retries is not None
        else settings.default_max_retries,
        priority=spec.priority,
        retry_on=[o.value for o in spec.retry_on] if spec.retry_on is not None else None,
        non_retryable_exit_codes=sorted(set(spec.non_retryable_exit_codes)),
        labels=dict(spec.labels),
        workdir=spec.workdir,
        disk_bytes=parse_memory(resources.disk) if resources.disk else settings.default_disk_bytes,
        stop_grace_seconds=spec.stop_grace_seconds,
        stall_timeout_seconds=spec.stall_timeout_seconds
        if spec.stall_timeout_seconds is not None
        else settings.default_stall_timeout_seconds,
    )


def live_agents(
    agents: Sequence[AgentInfo], *, now: datetime, heartbeat_seconds: float
) -> list[AgentInfo]:
    """Agents that have not stopped and whose heartbeat is recent (three beats, at least 15 s)."""
    limit = timedelta(seconds=max(3 * heartbeat_seconds, 15))
    return [a for a in agents if a.stopped_at is None and now - a.heartbeat_at <= limit]


def whole(agent: AgentInfo) -> Free:
    """Everything an agent offers, as if nothing were held: what could ever run there."""
    return Free(agent.slots, agent.memory_bytes, agent.cpus, tuple(agent.gpu_ids))


def unschedulable_reason(
    memory_bytes: int, cpus: float, gpus: int, agents: Sequence[AgentInfo]
) -> str | None:
    """Why no live agent could ever run this, or None if one could (or none is known yet:
    agents may join later)."""
    if not agents:
        return None
    demand = Demand("", memory_bytes, cpus, gpus)
    if any(whole(a).fits(demand) for a in agents):
        return None
    problems = []
    largest_memory = max(a.memory_bytes for a in agents)
    if memory_bytes > largest_memory:
        problems.append(
            f"resources.memory {human_size(memory_bytes)} is more than any agent offers "
            f"(largest: {human_size(largest_memory)})"
        )
    largest_cpus = max(a.cpus for a in agents)
    if cpus > largest_cpus:
        problems.append(
            f"resources.cpus {cpus:g} is more than any agent's (largest: {largest_cpus:g})"
        )
    largest_gpus = max(len(a.gpu_ids) for a in agents)
    if gpus > largest_gpus:
        problems.append(
            f"resources.gpus {gpus} is more than any agent has (largest: {largest_gpus})"
        )
    if not problems:  # each fits some agent, but no single agent has all of it
        offers = ", ".join(
            f"{a.id}: {human_size(a.memory_bytes)}, {a.cpus:g} cpus, {len(a.gpu_ids)} gpus"
            for a in agents
        )
        problems.append(f"no single agent offers all of it ({offers})")
    return "; ".join(problems)


def image_refusal(image: str, allowed: Sequence[str]) -> str | None:
    """Why `image` may not run here (TRAINYARD_ALLOWED_IMAGES, shell-style patterns), or None.

    The agent holds the Docker socket: which images run is the operator's call."""
    if any(fnmatch.fnmatchcase(image, pattern) for pattern in allowed):
        return None
    return (
        f"image {image!r} is not allowed on this service; allowed: {', '.join(allowed)} "
        "(TRAINYARD_ALLOWED_IMAGES)"
    )
