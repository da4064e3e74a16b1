"""AttemptExecution against the in-memory FakeRuntime and a real SQLite queue: every way one
container run can end is recorded as the right outcome, with no Docker anywhere."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from agent.config import Settings
from agent.core.errors import ContainerError, DatabaseUnavailable
from agent.core.jobs import JobStatus
from agent.core.records import Claim, Job
from agent.core.retry import RetryPolicy
from agent.core.scheduling import Capacity
from agent.db.engine import Database
from agent.db.migrate import upgrade
from agent.db.queue import JobQueue
from agent.joblog import job_log_path, parse_line
from agent.runtime.base import ContainerSpec, ContainerState
from agent.runtime.fake import Behaviour, FakeRuntime
from agent.worker.container_spec import container_spec
from agent.worker.execution import AttemptExecution
from agent.worker.supervisor import StopReason
from tests.unit.jobs_for_tests import new_job

GRACE = 0.5
DEADLINE = 15.0


@dataclass
class Env:
    settings: Settings
    queue: JobQueue
    runtime: FakeRuntime

    @property
    def agent_id(self) -> str:
        return self.settings.agent_id

    def submit(self, **overrides: Any) -> Job:
        return self.queue.submit(new_job(**overrides), max_queued=100)

    def claim(self) -> Claim:
        capacity = Capacity(slots=4, memory_bytes=64 * 2**30, cpus=64.0, gpu_ids=())
        claim = self.queue.claim(self.agent_id, capacity, lease_seconds=60)
        assert claim is not None
        return claim

    def execution(self, claim: Claim, done: list[AttemptExecution]) -> AttemptExecution:
        return AttemptExecution(
            claim,
            settings=self.settings,
            queue=self.queue,
            runtime=self.runtime,
            policy=RetryPolicy(base_delay=0.2, jitter=0.0),
            on_done=done.append,
        )

    def run(self, **job: Any) -> tuple[AttemptExecution, Job]:
        """Submit, claim and run one attempt to its end (in this thread)."""
        submitted = self.submit(**job)
        done: list[AttemptExecution] = []
        execution = self.execution(self.claim(), done)
        execution.run()
        assert done == [execution], "on_done must be called exactly once"
        return execution, self.queue.get(submitted.id)

    def start(self, **job: Any) -> tuple[AttemptExecution, threading.Thread]:
        """Submit, claim and start one attempt in a thread; returns once it is running."""
        submitted = self.submit(**job)
        execution = self.execution(self.claim(), [])
        thread = threading.Thread(target=execution.run, daemon=True)
        thread.start()
        wait_until(lambda: self.queue.get(submitted.id).status is JobStatus.RUNNING)
        return execution, thread

    def log_lines(self, job_id: str) -> list[tuple[str, str]]:
        path = job_log_path(self.settings.log_dir, job_id)
        entries = [parse_line(line) for line in path.read_text().splitlines()]
        return [(e.source, e.text) for e in entries if e is not None]

    def container_output(self, job_id: str) -> list[tuple[str, str]]:
        return [(s, t) for s, t in self.log_lines(job_id) if s != "agent"]

    def agent_text(self, job_id: str) -> str:
        return "\n".join(t for s, t in self.log_lines(job_id) if s == "agent")

    def end_all(self) -> None:
        """Every running container exits on its own."""
        for container_id in self.runtime.running():
            container = self.runtime.containers.get(container_id)
            if container is not None:
                container.exit(0)

    def assert_clean(self) -> None:
        """No container left, every attempt's resources released."""
        assert self.runtime.containers == {}
        assert self.queue.unreleased(self.agent_id) == set()


def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def join(thread: threading.Thread) -> None:
    thread.join(DEADLINE)
    assert not thread.is_alive(), "the attempt did not end"


@pytest.fixture
def env(make_settings: Callable[..., Settings], sqlite_url: str) -> Iterator[Env]:
    settings = make_settings(database_url=sqlite_url, stop_grace_seconds=GRACE, log_stall_seconds=2)
    upgrade(sqlite_url)
    db = Database(sqlite_url)
    environment = Env(settings, JobQueue(db), FakeRuntime())
    yield environment
    environment.end_all()  # what a failed test left running
    db.dispose()


def script(env: Env, behaviour: Behaviour) -> None:
    env.runtime.script = lambda spec: behaviour


# --- endings the container chooses ---------------------------------------------------------


def test_success_logs_every_line_in_order_and_cleans_up(env: Env) -> None:
    output = [("stdout", f"epoch {i}") for i in range(5)] + [("stderr", "warning: x")]
    output += [("stdout", "done")]
    script(env, Behaviour(output=output, run_seconds=0.05))

    execution, job = env.run()

    assert job.status is JobStatus.SUCCEEDED
    assert (job.outcome, job.exit_code, job.attempt_count) == ("succeeded", 0, 1)
    [attempt] = job.attempts
    assert attempt.outcome == "succeeded" and attempt.exit_code == 0
    assert attempt.container_id == execution.container_id is not None
    assert attempt.started_at is not None and attempt.finished_at is not None
    assert env.container_output(job.id) == output
    assert env.runtime.removed == [execution.container_id]
    [spec] = env.runtime.created
    assert spec.labels["trainyard.job_id"] == job.id
    assert spec.labels["trainyard.attempt"] == "1"
    assert spec.labels["trainyard.agent"] == env.agent_id
    assert spec.env["TRAINYARD_JOB_ID"] == job.id
    assert env.runtime.stops == []
    assert "finished: succeeded" in env.agent_text(job.id)
    env.assert_clean()


def test_a_non_zero_exit_is_a_user_error_retried_per_max_retries(env: Env) -> None:
    script(env, Behaviour(output=[("stderr", "Traceback: boom")], exit_code=3))

    _, job = env.run(max_retries=2)

    assert job.status is JobStatus.QUEUED  # a retry is scheduled
    assert (job.outcome, job.exit_code) == ("user_error", 3)
    assert (job.retries_used, job.infra_retries_used) == (1, 0)
    assert job.not_before is not None and job.finished_at is None
    assert [a.outcome for a in job.attempts] == ["user_error"]
    assert "retry in" in env.agent_text(job.id)
    assert env.container_output(job.id) == [("stderr", "Traceback: boom")]
    env.assert_clean()


def test_a_failed_attempt_says_why_with_its_last_stderr_lines(env: Env) -> None:
    output = [("stdout", "epoch 1"), *(("stderr", f"trace {i}") for i in range(8))]
    output.append(("stderr", "ValueError: batch_size must be positive"))
    script(env, Behaviour(output=output, exit_code=1))

    _, job = env.run(max_retries=0)

    assert job.reason is not None
    assert job.reason.startswith("exit code 1; last stderr: ")
    assert job.reason.endswith("trace 7 | ValueError: batch_size must be positive")
    assert "trace 3" not in job.reason  # the last few lines only
    assert "epoch 1" not in job.reason  # stderr, not stdout
    assert job.attempts[0].reason == job.reason


def test_a_cuda_oom_is_not_retried_unless_the_job_opts_in_and_then_it_is_told(
    env: Env,
) -> None:
    script(env, Behaviour(output=[("stderr", "RuntimeError: CUDA out of memory.")], exit_code=1))
    _, job = env.run(max_retries=3)
    assert (job.status, job.outcome) == (JobStatus.FAILED, "cuda_oom")

    _, job = env.run(max_retries=3, retry_on=["cuda_oom"])
    assert (job.status, job.outcome) == (JobStatus.QUEUED, "cuda_oom")  # retry scheduled
    retry = env.queue.get(job.id)
    spec = container_spec(Claim(retry, 2, "token", (), env.agent_id), env.settings)
    assert spec.env["TRAINYARD_LAST_OUTCOME"] == "cuda_oom"
    assert spec.env["TRAINYARD_RESUME"] == "1"


def test_a_non_zero_exit_with_no_retries_left_fails_the_job(env: Env) -> None:
    script(env, Behaviour(exit_code=2))

    _, job = env.run(max_retries=0)

    assert job.status is JobStatus.FAILED
    assert (job.outcome, job.exit_code, job.retries_used) == ("user_error", 2, 0)
    assert job.not_before is None and job.finished_at is not None
    env.assert_clean()


def test_an_oom_kill_is_outcome_oom(env: Env) -> None:
    script(env, Behaviour(output=[("stdout", "allocating")], oom=True, run_seconds=0.05))

    _, job = env.run(max_retries=2)

    assert job.status is JobStatus.FAILED  # oom is not retried unless the job asks
    assert (job.outcome, job.exit_code) == ("oom", 137)
    [attempt] = job.attempts
    assert attempt.oom_killed is True
    assert "memory limit of 256m" in (attempt.reason or "").lower()
    env.assert_clean()


def test_a_cuda_oom_line_in_the_output_is_outcome_cuda_oom(env: Env) -> None:
    lines = [
        ("stdout", "epoch 1"),
        ("stderr", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
    ]
    script(env, Behaviour(output=lines, exit_code=1))

    _, job = env.run(max_retries=0)

    assert job.status is JobStatus.FAILED
    assert (job.outcome, job.exit_code) == ("cuda_oom", 1)
    assert env.container_output(job.id) == lines
    env.assert_clean()


def test_a_container_killed_from_outside_is_an_infra_error(env: Env) -> None:
    script(env, Behaviour(killed_from_outside=True, run_seconds=0.05))

    _, job = env.run(max_retries=0)

    # infra_error is retried on its own budget, not the job's max_retries
    assert job.status is JobStatus.QUEUED
    assert (job.outcome, job.exit_code) == ("infra_error", 137)
    assert (job.retries_used, job.infra_retries_used) == (0, 1)
    assert "from outside" in (job.reason or "")
    env.assert_clean()


def test_a_container_that_vanishes_is_an_infra_error(env: Env) -> None:
    script(env, Behaviour(output=[("stdout", "hello")], vanish=True))

    execution, job = env.run(max_retries=0)

    assert job.status is JobStatus.QUEUED
    assert job.outcome == "infra_error"
    assert "vanished" in (job.reason or "")
    assert (job.retries_used, job.infra_retries_used) == (0, 1)
    assert "the container vanished" in env.agent_text(job.id)
    assert execution.container_id not in env.runtime.removed  # it was already gone
    env.assert_clean()


# --- endings the agent chooses ------------------------------------------------------------


def test_a_cancel_while_running_stops_the_container_with_the_grace_period(env: Env) -> None:
    script(env, Behaviour(output=[("stdout", "training")], run_seconds=None))
    execution, thread = env.start(max_retries=3)
    assert execution.container_id in env.runtime.running()

    execution.request_stop(StopReason.CANCELLED, "alice")
    join(thread)

    job = env.queue.get(execution.job_id)
    assert job.status is JobStatus.CANCELLED
    assert (job.outcome, job.exit_code, job.retries_used) == ("cancelled", 143, 0)
    assert env.runtime.stops == [(execution.container_id, GRACE)]
    assert "cancel requested by alice" in env.agent_text(job.id)
    assert env.container_output(job.id) == [("stdout", "training")]
    env.assert_clean()


def test_a_job_past_its_timeout_is_stopped_as_timeout(env: Env) -> None:
    script(env, Behaviour(output=[("stdout", "forever")], run_seconds=None))
    execution, thread = env.start(timeout_seconds=1, max_retries=3)

    join(thread)  # no one stops it but the deadline

    job = env.queue.get(execution.job_id)
    assert job.status is JobStatus.FAILED  # timeout is not retried unless the job asks
    assert job.outcome == "timeout"
    assert env.runtime.stops == [(execution.container_id, GRACE)]
    assert "timeout of 1s reached" in env.agent_text(job.id)
    env.assert_clean()


def test_a_container_ignoring_sigterm_is_killed_after_the_grace_period(env: Env) -> None:
    script(env, Behaviour(run_seconds=None, ignores_sigterm=True))
    execution, thread = env.start()

    asked = time.monotonic()
    execution.request_stop(StopReason.CANCELLED, "bob")
    join(thread)

    assert time.monotonic() - asked >= GRACE  # SIGKILL only once the grace period is over
    job = env.queue.get(execution.job_id)
    assert job.status is JobStatus.CANCELLED
    assert (job.outcome, job.exit_code) == ("cancelled", 137)
    assert env.runtime.stops == [(execution.container_id, GRACE)]
    env.assert_clean()


# --- the container never runs -------------------------------------------------------------


def test_an_engine_outage_at_create_is_an_infra_error(env: Env) -> None:
    env.runtime.engine_down = True

    _, job = env.run(max_retries=0)

    assert job.status is JobStatus.QUEUED  # retried on the infra budget
    assert job.outcome == "infra_error"
    assert "unreachable" in (job.reason or "")
    assert (job.retries_used, job.infra_retries_used) == (0, 1)
    [attempt] = job.attempts
    assert attempt.container_id is None and attempt.started_at is None
    assert env.runtime.created == []
    assert "could not start" in env.agent_text(job.id)
    env.runtime.engine_down = False
    env.assert_clean()


def test_a_permanent_create_error_is_a_config_error_and_not_retried(env: Env) -> None:
    error = ContainerError("pull access denied for nope/nope", permanent=True)
    script(env, Behaviour(create_error=error))

    _, job = env.run(max_retries=3)

    assert job.status is JobStatus.FAILED
    assert job.outcome == "config_error"
    assert "pull access denied" in (job.reason or "")
    assert (job.retries_used, job.infra_retries_used, job.not_before) == (0, 0, None)
    env.assert_clean()


def test_a_transient_start_error_is_an_infra_error_and_the_container_is_removed(
    env: Env,
) -> None:
    script(env, Behaviour(start_error=ContainerError("cgroup busy")))

    execution, job = env.run(max_retries=0)

    assert job.status is JobStatus.QUEUED
    assert job.outcome == "infra_error" and "cgroup busy" in (job.reason or "")
    assert env.runtime.removed == [execution.container_id]
    [attempt] = job.attempts  # the container that never ran is on record with its result
    assert attempt.container_id == execution.container_id and attempt.started_at is None
    env.assert_clean()


def test_a_cancel_before_the_start_never_starts_the_container(env: Env) -> None:
    script(env, Behaviour(run_seconds=None))
    submitted = env.submit()
    execution = env.execution(env.claim(), [])
    execution.request_stop(StopReason.CANCELLED, "carol")

    execution.run()

    job = env.queue.get(submitted.id)
    assert job.status is JobStatus.CANCELLED
    assert job.reason == "cancelled by carol"
    assert len(env.runtime.created) == 1 and env.runtime.stops == []
    env.assert_clean()


# --- the fallback when the engine does not report an exit code ----------------------------


class NoExitCodeRuntime(FakeRuntime):
    """An engine whose inspect has no State.ExitCode (DockerRunner reads it as -1): the exit
    code must then come from what `wait` returned."""

    def inspect(self, container_id: str) -> ContainerState:
        return dataclasses.replace(super().inspect(container_id), exit_code=-1)


def test_without_an_inspected_exit_code_the_waited_one_is_used(env: Env) -> None:
    env.runtime = NoExitCodeRuntime(lambda spec: Behaviour(exit_code=3))

    _, job = env.run(max_retries=0)

    assert (job.outcome, job.exit_code) == ("user_error", 3)


def test_without_an_inspected_exit_code_a_waited_zero_is_success(env: Env) -> None:
    env.runtime = NoExitCodeRuntime(lambda spec: Behaviour(exit_code=0))

    _, job = env.run(max_retries=0)

    assert (job.status, job.outcome, job.exit_code) == (JobStatus.SUCCEEDED, "succeeded", 0)


# --- a cancel that races the container's own exit -----------------------------------------


def test_a_pending_cancel_is_not_lost_when_the_attempt_fails_first(env: Env) -> None:
    script(env, Behaviour(run_seconds=None))
    execution, thread = env.start(max_retries=3)
    assert execution.container_id is not None

    env.queue.request_cancel(execution.job_id, "alice")
    # The container fails on its own before the agent's next poll relays the cancel.
    env.runtime.containers[execution.container_id].exit(1)
    join(thread)

    job = env.queue.get(execution.job_id)
    assert job.cancel_requested_by == "alice"
    assert job.status.is_final, f"job {job.status.value}, retry at {job.not_before}"


# --- the engine or the database failing at the wrong moment -------------------------------


class StopFailsOnceRuntime(FakeRuntime):
    """The engine refuses the first stop (as Docker's "tried to kill container, but did not
    receive an exit event"), then stops normally."""

    def __init__(self, script: Callable[[ContainerSpec], Behaviour]) -> None:
        super().__init__(script)
        self.refused = 0

    def stop(self, container_id: str, *, grace_seconds: float) -> None:
        if self.refused == 0:
            self.refused += 1
            raise ContainerError("cannot stop container: did not receive an exit event")
        super().stop(container_id, grace_seconds=grace_seconds)


def test_a_cancel_whose_first_stop_fails_still_stops_the_container(env: Env) -> None:
    env.runtime = StopFailsOnceRuntime(lambda spec: Behaviour(run_seconds=None))
    execution, thread = env.start()
    assert execution.container_id is not None
    try:
        execution.request_stop(StopReason.CANCELLED, "alice")
        thread.join(3)
        assert not thread.is_alive(), "the container was never stopped"
        assert env.queue.get(execution.job_id).status is JobStatus.CANCELLED
    finally:
        env.end_all()
        thread.join(DEADLINE)


class FinishFailsQueue(JobQueue):
    def finish(self, *args: Any, **kwargs: Any) -> JobStatus:
        raise DatabaseUnavailable("database unavailable: database is locked")


def test_run_does_not_raise_when_the_result_cannot_be_stored(env: Env) -> None:
    env.queue = FinishFailsQueue(env.queue.db)
    submitted = env.submit()
    done: list[AttemptExecution] = []
    execution = env.execution(env.claim(), done)
    try:
        execution.run()
    finally:
        assert done == [execution]
        assert env.runtime.containers != {}  # kept: reconcile collects the real result
    assert env.queue.get(submitted.id).status is JobStatus.RUNNING  # reconcile's to fix


# --- the agent stops it: a stall, a disk budget, its own grace period ------------------------


def test_a_job_that_prints_nothing_for_its_stall_timeout_is_stopped_as_stalled(env: Env) -> None:
    script(
        env,
        Behaviour(output=[("stdout", "epoch 1"), ("stderr", "nccl: waiting")], run_seconds=None),
    )
    execution, thread = env.start(stall_timeout_seconds=1, max_retries=0)

    join(thread)  # nothing stops it but the silence

    job = env.queue.get(execution.job_id)
    # Stalls are retried on the platform's budget (a fresh start usually clears them).
    assert job.status is JobStatus.QUEUED
    assert (job.outcome, job.retries_used, job.infra_retries_used) == ("stalled", 0, 1)
    assert job.reason is not None
    assert "stalled (no output for 1s)" in job.reason
    assert "last output: epoch 1 | nccl: waiting" in job.reason
    assert "stalled: no output for 1s" in env.agent_text(job.id)
    assert env.runtime.stops == [(execution.container_id, GRACE)]
    env.assert_clean()


def test_a_job_that_keeps_printing_is_not_stalled(env: Env) -> None:
    # No output at all, but no stall timeout either: it runs until it ends on its own.
    script(env, Behaviour(run_seconds=None))
    execution, thread = env.start()
    time.sleep(1.2)
    assert execution.container_id in env.runtime.running()
    env.end_all()
    join(thread)
    assert env.queue.get(execution.job_id).outcome == "succeeded"
    env.assert_clean()


def test_a_job_past_its_disk_budget_is_stopped_as_disk_exceeded(
    make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    settings = make_settings(
        database_url=sqlite_url, stop_grace_seconds=GRACE, disk_check_seconds=0.1
    )
    upgrade(sqlite_url)
    db = Database(sqlite_url)
    env = Env(settings, JobQueue(db), FakeRuntime())
    try:
        script(env, Behaviour(run_seconds=None, disk_bytes=3 * 2**20))
        execution, thread = env.start(disk_bytes=2**20, max_retries=3)
        join(thread)
        job = env.queue.get(execution.job_id)
        assert job.status is JobStatus.FAILED  # the same job fills the same disk: not retried
        assert job.outcome == "disk_exceeded"
        assert job.reason is not None
        assert "3 MiB used" in job.reason and "of 1 MiB" in job.reason
        assert "resources.disk" in job.reason
        env.assert_clean()
    finally:
        env.end_all()
        db.dispose()


def test_a_job_within_its_disk_budget_runs_on(
    make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    settings = make_settings(database_url=sqlite_url, disk_check_seconds=0.1)
    upgrade(sqlite_url)
    db = Database(sqlite_url)
    env = Env(settings, JobQueue(db), FakeRuntime())
    try:
        script(env, Behaviour(run_seconds=None, disk_bytes=2**20))
        execution, thread = env.start(disk_bytes=2 * 2**20)
        time.sleep(0.6)  # several checks
        assert execution.container_id in env.runtime.running()
        env.end_all()
        join(thread)
        assert env.queue.get(execution.job_id).outcome == "succeeded"
    finally:
        env.end_all()
        db.dispose()


def test_a_jobs_own_stop_grace_replaces_the_agents(env: Env) -> None:
    script(env, Behaviour(run_seconds=None, ignores_sigterm=True))
    execution, thread = env.start(stop_grace_seconds=0)

    execution.request_stop(StopReason.CANCELLED, "bob")
    join(thread)

    job = env.queue.get(execution.job_id)
    assert (job.outcome, job.exit_code) == ("cancelled", 137)
    assert env.runtime.stops == [(execution.container_id, 0.0)]
    assert "SIGKILL after 0s" in env.agent_text(job.id)
    assert job.reason is not None and "killed (SIGKILL) after the grace period" in job.reason
    env.assert_clean()
