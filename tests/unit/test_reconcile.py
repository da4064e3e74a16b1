"""The reconcile plan: adopt, remove or requeue — pure."""

from __future__ import annotations

from agent.core.jobs import JobStatus
from agent.core.reconcile import container_key, plan
from agent.core.records import ActiveAttempt
from agent.runtime.base import ContainerState


def container(job_id: str | None, attempt: str | None, status: str = "running") -> ContainerState:
    labels = {"trainyard.agent": "a1"}
    if job_id is not None:
        labels["trainyard.job_id"] = job_id
    if attempt is not None:
        labels["trainyard.attempt"] = attempt
    return ContainerState(f"c-{job_id}-{attempt}", status, 0, False, "", labels)


def active(job_id: str, attempt: int, status: JobStatus = JobStatus.RUNNING) -> ActiveAttempt:
    return ActiveAttempt(job_id, attempt, "tok", status, None, 1, 1.0, ())


def test_a_container_of_an_attempt_still_held_is_adopted() -> None:
    c, a = container("j1", "2"), active("j1", 2)
    result = plan([c], [a], set())
    assert result.adopt == [(a, c)]
    assert result.remove == [] and result.lost == []


def test_containers_of_finished_or_unknown_jobs_or_old_attempts_are_removed() -> None:
    finished = container("done", "1", "exited")
    old_attempt = container("j1", "1", "exited")
    unlabelled = container(None, None)
    garbled = container("j2", "x")
    result = plan([finished, old_attempt, unlabelled, garbled], [active("j1", 2)], set())
    assert result.remove == [finished, old_attempt, unlabelled, garbled]
    assert result.adopt == []
    assert result.lost == [active("j1", 2)]  # attempt 2 has no container: lost


def test_what_this_process_runs_is_left_alone() -> None:
    c, a = container("j1", "1"), active("j1", 1)
    result = plan([c], [a], {("j1", 1)})
    assert result.empty
    # Even without a container yet (it is being created right now).
    assert plan([], [a], {("j1", 1)}).empty


def test_an_attempt_without_container_or_thread_is_lost() -> None:
    a = active("j1", 1, JobStatus.STARTING)
    assert plan([], [a], set()).lost == [a]


def test_container_key_reads_the_labels() -> None:
    assert container_key(container("j1", "3")) == ("j1", 3)
    assert container_key(container("j1", None)) is None
    assert container_key(container(None, "1")) is None


def test_resources_of_finished_attempts_without_containers_are_released() -> None:
    running = active("j1", 2)
    result = plan(
        [container("j3", "1", "exited")],
        [running],
        {("j4", 1)},
        unreleased={("j1", 2), ("j2", 1), ("j3", 1), ("j4", 1)},
    )
    # j1/2 is active (lost, released after recording); j3/1 is released after its removal;
    # j4/1 runs in this process; only j2/1 is over with nothing left to remove.
    assert result.release == [("j2", 1)]
    assert result.lost == [running]
    assert [c.labels["trainyard.job_id"] for c in result.remove] == ["j3"]
