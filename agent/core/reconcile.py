"""Make the engine and the database agree: at agent start, and periodically.

The plan is pure. Containers carry labels `trainyard.job_id`, `trainyard.attempt` and
`trainyard.agent`:

- a container of an attempt the database says this agent still holds, which no thread of this
  process runs, is **adopted**: re-attached while it runs, collected once it has exited;
- any other container of this agent is **removed** (its job finished, was cancelled, moved on
  to a later attempt, or is unknown);
- an attempt the database says this agent holds, with neither a container nor a thread, is
  **lost**: recorded as `infra_error` and retried without spending the job's `max_retries`;
- an attempt that is over but still holds resources in the ledger, with neither a container nor
  a thread, is **released** (its container is confirmed gone).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from agent.core.records import ActiveAttempt

JOB_LABEL = "trainyard.job_id"
ATTEMPT_LABEL = "trainyard.attempt"
AGENT_LABEL = "trainyard.agent"

Key = tuple[str, int]


class Labelled(Protocol):
    """All the plan needs of a container (the runtime's ContainerState is one)."""

    @property
    def labels(self) -> Mapping[str, str]: ...


C = TypeVar("C", bound=Labelled)


@dataclass(frozen=True)
class Plan(Generic[C]):
    adopt: list[tuple[ActiveAttempt, C]] = field(default_factory=list)
    remove: list[C] = field(default_factory=list)
    lost: list[ActiveAttempt] = field(default_factory=list)
    release: list[Key] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.adopt or self.remove or self.lost or self.release)


def container_key(state: Labelled) -> Key | None:
    job_id = state.labels.get(JOB_LABEL)
    attempt = state.labels.get(ATTEMPT_LABEL, "")
    if not job_id or not attempt.isdigit():
        return None
    return job_id, int(attempt)


def plan(
    containers: Iterable[C],
    active: Iterable[ActiveAttempt],
    in_process: set[Key],
    unreleased: set[Key] | None = None,
) -> Plan[C]:
    """What to do, given this agent's containers, its attempts in the database, and the
    attempts threads of this process are running right now (those are left alone)."""
    result: Plan[C] = Plan()
    by_key = {(a.job_id, a.attempt): a for a in active}
    with_container: set[Key] = set()
    containers = list(containers)
    for state in containers:
        key = container_key(state)
        if key is not None and key in in_process:
            continue
        if key is not None and key in by_key:
            result.adopt.append((by_key[key], state))
            with_container.add(key)
        else:
            result.remove.append(state)
    for key, attempt in by_key.items():
        if key not in in_process and key not in with_container:
            result.lost.append(attempt)
    keys_with_containers = {container_key(state) for state in containers}
    for key in sorted(unreleased or set()):
        # Removed containers are released after their removal; lost ones after recording.
        if key not in in_process and key not in by_key and key not in keys_with_containers:
            result.release.append(key)
    return result
