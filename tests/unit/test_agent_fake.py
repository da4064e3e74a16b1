"""The agent loop against the in-memory FakeRuntime and a real SQLite queue: claiming within
its slots, engine outages, cancels, shutdown, and reconciling after a restart."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from agent.config import Settings
from agent.core.jobs import JobStatus
from agent.core.records import Claim, Job
from agent.core.retry import RetryPolicy
from agent.core.scheduling import Capacity
from agent.db.engine import Database
from agent.db.migrate import upgrade
from agent.db.models import JobRow
from agent.db.queue import JobQueue
from agent.joblog import JobLogWriter, job_log_path, parse_line
from agent.runtime.base import AGENT_LABEL, ATTEMPT_LABEL, JOB_LABEL, ContainerSpec
from agent.runtime.fake import Behaviour, FakeRuntime
from agent.worker import agent as agent_module
from agent.worker.agent import Agent
from agent.worker.container_spec import container_spec
from agent.worker.duties import record_lost
from tests.unit.jobs_for_tests import new_job

GRACE = 0.5
SLOTS = 2
DEADLINE = 20.0

FOREVER = Behaviour(output=[("stdout", "training")], run_seconds=None)
QUICK = Behaviour(output=[("stdout", "done")], run_seconds=0.05)


@dataclass
class Env:
    settings: Settings
    queue: JobQueue
    runtime: FakeRuntime
    agents: list[Agent] = field(default_factory=list)

    @property
    def agent_id(self) -> str:
        return self.settings.agent_id

    @property
    def capacity(self) -> Capacity:
        return Capacity(slots=SLOTS, memory_bytes=64 * 2**30, cpus=64.0, gpu_ids=())

    def agent(self, *, start: bool = True) -> Agent:
        agent = Agent(self.settings, self.queue, self.runtime, self.capacity)
        self.agents.append(agent)
        if start:
            agent.start()
        return agent

    def submit(self, **overrides: Any) -> Job:
        job = self.queue.submit(new_job(**overrides), max_queued=100)
        for agent in self.agents:
            agent.wake()  # as the service does on submit
        return job

    def job(self, job_id: str) -> Job:
        return self.queue.get(job_id)

    def wait_status(self, job_id: str, *statuses: JobStatus) -> Job:
        wait_until(lambda: self.job(job_id).status in statuses, f"job {job_id} {statuses}")
        return self.job(job_id)

    def wait_final(self, job_id: str) -> Job:
        return self.wait_status(job_id, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)

    def container_of(self, job_id: str) -> str:
        """The id of the job's current attempt's container."""
        attempt = self.job(job_id).attempts[-1]
        assert attempt.container_id is not None
        return attempt.container_id

    def end(self, container_id: str, code: int = 0) -> None:
        """The container exits on its own."""
        container = self.runtime.containers.get(container_id)
        if container is not None:
            container.exit(code)

    def log_output(self, job_id: str) -> list[tuple[str, str]]:
        path = job_log_path(self.settings.log_dir, job_id)
        entries = [parse_line(line) for line in path.read_text().splitlines()]
        return [(e.source, e.text) for e in entries if e is not None and e.source != "agent"]

    def agent_text(self, job_id: str) -> str:
        path = job_log_path(self.settings.log_dir, job_id)
        entries = [parse_line(line) for line in path.read_text().splitlines()]
        return "\n".join(e.text for e in entries if e is not None and e.source == "agent")

    def assert_clean(self) -> None:
        """Nothing running, no container left, every attempt's resources released (at its
        container's exit; its result is stored, then the container removed)."""
        wait_until(lambda: not self.runtime.containers, "containers removed")
        assert self.runtime.running() == []
        wait_until(lambda: not self.queue.unreleased(self.agent_id), "resources released")


def wait_until(predicate: Callable[[], bool], what: str = "condition") -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {DEADLINE}s")
        time.sleep(0.02)


def by_env(**behaviours: Behaviour) -> Callable[[ContainerSpec], Behaviour]:
    """A script choosing each container's behaviour by the job's ROLE env variable."""
    return lambda spec: behaviours[spec.env.get("ROLE", "default")]


@pytest.fixture
def env(
    make_settings: Callable[..., Settings], sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Env]:
    # The loop's own clocks, shortened: lease/cancel polls and engine re-pings.
    monkeypatch.setattr(agent_module, "CANCEL_POLL_SECONDS", 0.2)
    monkeypatch.setattr(agent_module, "ENGINE_RETRY_SECONDS", 0.3)
    settings = make_settings(
        database_url=sqlite_url,
        max_concurrent_jobs=SLOTS,
        stop_grace_seconds=GRACE,
        poll_interval=0.1,
        heartbeat_seconds=0.2,
        log_stall_seconds=2,
    )
    upgrade(sqlite_url)
    db = Database(sqlite_url)
    environment = Env(settings, JobQueue(db), FakeRuntime(lambda spec: QUICK))
    yield environment
    environment.runtime.engine_down = False
    for agent in environment.agents:
        agent.stop(timeout=10)
    for container_id in environment.runtime.running():  # what a failed test left behind
        environment.end(container_id)
    db.dispose()


class Sampler:
    """Watches how many fake containers run at once, from its own thread."""

    def __init__(self, runtime: FakeRuntime) -> None:
        self.runtime = runtime
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.most = max(self.most, len(self.runtime.running()))


# --- claiming within the slots -------------------------------------------------------------


def test_jobs_run_with_at_most_max_concurrent_jobs_at_once(env: Env) -> None:
    env.runtime.script = lambda spec: FOREVER
    jobs = [env.submit(name=f"j{i}") for i in range(5)]
    with Sampler(env.runtime) as sampler:
        agent = env.agent()
        wait_until(lambda: len(env.runtime.running()) == SLOTS, "slots filled")
        time.sleep(0.5)  # several poll intervals: a third job must not start
        assert len(env.runtime.running()) == SLOTS
        assert len(agent.running_job_ids()) == SLOTS
        statuses = [env.job(j.id).status for j in jobs]
        assert statuses.count(JobStatus.QUEUED) == len(jobs) - SLOTS

        def all_final() -> bool:
            for cid in env.runtime.running():  # let whatever runs finish, one at a time
                env.end(cid)
                break
            return all(env.job(j.id).status.is_final for j in jobs)

        wait_until(all_final, "all jobs final")

    assert sampler.most == SLOTS
    for job in jobs:
        final = env.job(job.id)
        assert (final.status, final.attempt_count) == (JobStatus.SUCCEEDED, 1)
        assert env.log_output(job.id) == [("stdout", "training")]
    env.assert_clean()
    assert len(env.runtime.created) == len(env.runtime.removed) == len(jobs)
    wait_until(lambda: agent.running_job_ids() == [], "every attempt's thread done")


def test_many_short_jobs_all_succeed_within_the_slots(env: Env) -> None:
    jobs = [env.submit(name=f"j{i}") for i in range(8)]
    with Sampler(env.runtime) as sampler:
        env.agent()
        for job in jobs:
            assert env.wait_final(job.id).status is JobStatus.SUCCEEDED
    assert 1 <= sampler.most <= SLOTS
    env.assert_clean()


def test_a_slot_is_free_at_its_containers_exit_and_removal_runs_beside_the_next_job(
    env: Env,
) -> None:
    # Removals hang: the slots must still turn over, results stored before any removal.
    gate = env.runtime.remove_gate = threading.Event()
    jobs = [env.submit(name=f"j{i}") for i in range(SLOTS * 3)]
    try:
        with Sampler(env.runtime) as sampler:
            agent = env.agent()
            for job in jobs:
                assert env.wait_final(job.id).status is JobStatus.SUCCEEDED
        assert env.runtime.removed == []
        assert len(env.runtime.containers) == len(jobs)  # exited, each awaiting its removal
        assert sampler.most <= SLOTS  # never more running at once than the slots
        assert not env.queue.unreleased(env.agent_id)
    finally:
        gate.set()
    env.assert_clean()
    wait_until(lambda: agent.running_job_ids() == [], "every attempt's thread done")
    for job in jobs:
        assert "removed" in env.agent_text(job.id)


# --- engine outages --------------------------------------------------------------------------


def test_nothing_is_claimed_while_the_engine_is_down(env: Env) -> None:
    env.runtime.engine_down = True
    agent = env.agent()
    jobs = [env.submit(name=f"j{i}") for i in range(3)]

    def outage_reported() -> bool:
        [info] = [a for a in env.queue.agents() if a.id == env.agent_id]
        return info.engine_error is not None

    wait_until(outage_reported, "the heartbeat reports the outage")
    time.sleep(0.5)  # several poll intervals
    assert env.runtime.created == []
    for job in jobs:
        assert (env.job(job.id).status, env.job(job.id).attempt_count) == (JobStatus.QUEUED, 0)
    assert agent.engine.error is not None

    env.runtime.engine_down = False
    for job in jobs:
        final = env.wait_final(job.id)
        assert (final.status, final.attempt_count) == (JobStatus.SUCCEEDED, 1)
    wait_until(lambda: not outage_reported(), "the heartbeat reports the engine back")
    env.assert_clean()


def test_an_outage_beginning_while_idle_costs_no_job_its_retries(env: Env) -> None:
    agent = env.agent()
    assert agent.engine.error is None
    env.runtime.engine_down = True
    jobs = [env.submit(name=f"j{i}", max_retries=0) for i in range(2)]

    # The agent learns of the outage from the first failed create, then stops claiming.
    wait_until(lambda: agent.engine.error is not None, "the outage noticed")
    assert env.runtime.created == []
    env.runtime.engine_down = False
    for job in jobs:
        final = env.wait_final(job.id)
        assert final.status is JobStatus.SUCCEEDED
        assert final.retries_used == 0  # infra failures spend the infra budget only
        assert [a.outcome for a in final.attempts[:-1]] == ["infra_error"] * (
            final.attempt_count - 1
        )
    env.assert_clean()


def test_an_outage_during_a_run_is_an_infra_error_and_cleaned_up_after(env: Env) -> None:
    env.runtime.script = lambda spec: FOREVER if spec.labels[ATTEMPT_LABEL] == "1" else QUICK
    agent = env.agent()
    job = env.submit()
    env.wait_status(job.id, JobStatus.RUNNING)
    first = env.container_of(job.id)

    env.runtime.engine_down = True
    # The attempt is recorded as lost with the engine (its container cannot be removed yet),
    # and the agent, checking the engine after an infra_error, stops claiming.
    wait_until(lambda: agent.engine.error is not None, "the outage noticed")
    wait_until(lambda: env.job(job.id).attempts[0].outcome is not None, "the attempt recorded")
    lost = env.job(job.id).attempts[0]
    assert lost.outcome == "infra_error" and "unreachable" in (lost.reason or "")
    assert first in env.runtime.containers
    env.runtime.engine_down = False

    final = env.wait_final(job.id)
    assert final.status is JobStatus.SUCCEEDED
    assert [a.outcome for a in final.attempts] == ["infra_error", "succeeded"]
    assert final.retries_used == 0
    assert first in env.runtime.removed  # reconcile removed it once the engine was back
    env.assert_clean()


# --- cancel and shutdown ---------------------------------------------------------------------


def test_a_cancel_through_the_queue_stops_the_running_job(env: Env) -> None:
    env.runtime.script = lambda spec: FOREVER
    env.agent()
    job = env.submit(max_retries=3)
    env.wait_status(job.id, JobStatus.RUNNING)
    container = env.container_of(job.id)

    env.queue.request_cancel(job.id, "alice")

    final = env.wait_final(job.id)
    assert final.status is JobStatus.CANCELLED
    assert (final.outcome, final.attempt_count, final.retries_used) == ("cancelled", 1, 0)
    assert final.cancel_requested_by == "alice"
    assert env.runtime.stops == [(container, GRACE)]
    assert "cancel requested by alice" in env.agent_text(job.id)
    kinds = [e.kind for e in env.queue.events(job.id)]
    assert kinds.index("cancel_requested") < kinds.index("finished")
    env.assert_clean()


def test_the_fast_cancel_path_stops_the_running_job(env: Env) -> None:
    env.runtime.script = lambda spec: FOREVER
    agent = env.agent()
    job = env.submit()
    env.wait_status(job.id, JobStatus.RUNNING)

    assert agent.cancel(job.id, "bob") is True
    assert agent.cancel("f" * 32, "bob") is False  # not running here

    final = env.wait_final(job.id)
    assert (final.status, final.outcome) == (JobStatus.CANCELLED, "cancelled")
    env.assert_clean()


def test_stop_requeues_the_running_job_and_a_restarted_agent_runs_it(env: Env) -> None:
    env.runtime.script = lambda spec: FOREVER if spec.labels[ATTEMPT_LABEL] == "1" else QUICK
    agent = env.agent()
    job = env.submit(max_retries=0)
    env.wait_status(job.id, JobStatus.RUNNING)
    container = env.container_of(job.id)

    agent.stop(timeout=10)

    requeued = env.job(job.id)
    assert requeued.status is JobStatus.QUEUED
    assert requeued.outcome == "infra_error"
    assert requeued.reason == "the agent shut down while the job ran"
    assert (requeued.retries_used, requeued.infra_retries_used) == (0, 1)
    assert env.runtime.stops == [(container, GRACE)]
    assert agent.running_job_ids() == []
    [info] = env.queue.agents()
    assert info.stopped_at is not None
    env.assert_clean()

    env.agent()  # the restart, on the same queue, runtime and settings
    final = env.wait_final(job.id)
    assert (final.status, final.attempt_count) == (JobStatus.SUCCEEDED, 2)
    env.assert_clean()


# --- a lease taken over by another agent ----------------------------------------------------


def take_over_lease(env: Env, job_id: str, *, retry_after: float) -> None:
    """What another agent's janitor does once this agent's lease expired: record the attempt
    as lost (infra_error) and requeue the job."""
    [attempt] = env.queue.active_attempts(env.agent_id)
    assert attempt.job_id == job_id
    policy = RetryPolicy(base_delay=retry_after, jitter=0.0)
    record_lost(env.settings, env.queue, policy, attempt, "lease expired", owner=env.agent_id)


def test_an_attempt_whose_lease_moved_on_is_stopped_and_leaves_the_result_alone(
    env: Env,
) -> None:
    env.runtime.script = lambda spec: FOREVER
    agent = env.agent()
    job = env.submit()
    env.wait_status(job.id, JobStatus.RUNNING)
    container = env.container_of(job.id)

    take_over_lease(env, job.id, retry_after=600)

    wait_until(lambda: agent.running_job_ids() == [], "the attempt left")
    after = env.job(job.id)
    assert after.status is JobStatus.QUEUED  # as the new owner wrote it: not overwritten
    assert [(a.outcome, a.reason) for a in after.attempts] == [("infra_error", "lease expired")]
    assert env.runtime.stops == [(container, GRACE)]
    assert "lease lost" in env.agent_text(job.id)
    env.assert_clean()


class GatedStopRuntime(FakeRuntime):
    """Stops block until the test opens the gate (a container slow to die)."""

    def __init__(self, script: Callable[[ContainerSpec], Behaviour]) -> None:
        super().__init__(script)
        self.stopping = threading.Event()
        self.gate = threading.Event()

    def stop(self, container_id: str, *, grace_seconds: float) -> None:
        self.stopping.set()
        self.gate.wait(DEADLINE)
        super().stop(container_id, grace_seconds=grace_seconds)


def test_two_attempts_of_one_job_in_one_agent_are_both_tracked(env: Env) -> None:
    runtime = env.runtime = GatedStopRuntime(lambda spec: FOREVER)
    try:
        attempt_two_stays_tracked(env, env.agent())
    finally:
        runtime.gate.set()


def attempt_two_stays_tracked(env: Env, agent: Agent) -> None:
    assert isinstance(env.runtime, GatedStopRuntime)
    job = env.submit()
    env.wait_status(job.id, JobStatus.RUNNING)
    first = env.container_of(job.id)

    take_over_lease(env, job.id, retry_after=600)
    assert env.runtime.stopping.wait(DEADLINE)  # attempt 1 is being stopped: lease lost
    with env.queue.db.transaction() as s:  # its retry falls due now
        row = s.get(JobRow, job.id)
        assert row is not None
        row.not_before = None
    agent.wake()
    wait_until(lambda: env.job(job.id).attempt_count == 2, "attempt 2 claimed")
    env.wait_status(job.id, JobStatus.RUNNING)
    env.runtime.gate.set()
    wait_until(lambda: first not in env.runtime.containers, "attempt 1 removed")
    attempt_one = f"job-{job.id[:8]}-1"  # the agent's name for attempt 1's thread
    wait_until(lambda: all(t.name != attempt_one for t in threading.enumerate()), "attempt 1 ended")

    assert agent.running_job_ids() == [job.id]  # attempt 2 still runs here
    agent.stop(timeout=10)
    assert env.runtime.running() == []


# --- reconciling after a restart ------------------------------------------------------------


def crashed_agent_left(env: Env, job: Job, *, started: bool = True) -> tuple[Claim, str]:
    """What an agent killed mid-run leaves: the job running in the database, its container
    running in the engine, and the first output line in the job log."""
    env.queue.register_agent(env.agent_id, "host", env.capacity)
    claim = env.queue.claim(env.agent_id, env.capacity, lease_seconds=60)
    assert claim is not None and claim.job.id == job.id
    container = env.runtime.create(container_spec(claim, env.settings))
    if started:
        env.runtime.start(container)
        assert env.queue.mark_running(claim, container)
        [first, *_] = next(iter(env.runtime.open_logs(container, follow=False)))
        path = job_log_path(env.settings.log_dir, job.id)
        with JobLogWriter(path) as writer:
            writer.agent("claimed by agent (before the crash)", attempt=1)
            writer.container_lines([first])
    return claim, container


def test_a_restarted_agent_adopts_the_container_it_left_running(env: Env) -> None:
    output = [("stdout", f"step {i}") for i in range(4)]
    env.runtime.script = lambda spec: Behaviour(output=output, run_seconds=None)
    job = env.submit()
    _, container = crashed_agent_left(env, job)

    agent = env.agent()

    wait_until(lambda: agent.running_job_ids() == [job.id], "the container adopted")
    wait_until(lambda: "re-attached" in env.agent_text(job.id), "the re-attach logged")
    assert env.job(job.id).status is JobStatus.RUNNING  # still running: not requeued
    env.end(container, 0)

    final = env.wait_final(job.id)
    assert (final.status, final.attempt_count) == (JobStatus.SUCCEEDED, 1)
    assert len(env.runtime.created) == 1  # no second container
    assert env.log_output(job.id) == output  # every line once, none doubled
    assert "reattached" in [e.kind for e in env.queue.events(job.id)]
    env.assert_clean()


def test_a_restarted_agent_starts_a_container_it_left_created(env: Env) -> None:
    env.runtime.script = lambda spec: QUICK
    job = env.submit()
    crashed_agent_left(env, job, started=False)

    env.agent()

    final = env.wait_final(job.id)
    assert (final.status, final.attempt_count) == (JobStatus.SUCCEEDED, 1)
    assert len(env.runtime.created) == 1
    assert env.log_output(job.id) == [("stdout", "done")]
    env.assert_clean()


def test_an_attempt_whose_container_is_gone_is_recorded_lost_and_rerun(env: Env) -> None:
    job = env.submit(max_retries=0)
    _, container = crashed_agent_left(env, job)
    env.runtime.remove(container)  # e.g. the host rebooted

    env.agent()

    final = env.wait_final(job.id)
    assert (final.status, final.attempt_count) == (JobStatus.SUCCEEDED, 2)
    assert final.attempts[0].outcome == "infra_error"
    assert "container was gone" in (final.attempts[0].reason or "")
    assert final.retries_used == 0
    env.assert_clean()


def test_reconcile_removes_unknown_containers_of_this_agent_only(env: Env) -> None:
    def orphan(agent_id: str, job_id: str) -> str:
        spec = ContainerSpec(
            name=f"orphan-{job_id}",
            image="trainyard/train:latest",
            command=None,
            env={},
            labels={JOB_LABEL: job_id, ATTEMPT_LABEL: "1", AGENT_LABEL: agent_id},
            memory_bytes=2**20,
            nano_cpus=10**9,
            pids_limit=64,
            user="1000:1000",
        )
        container = env.runtime.create(spec)
        env.runtime.start(container)
        return container

    env.runtime.script = lambda spec: FOREVER
    mine = orphan(env.agent_id, "a" * 32)
    theirs = orphan("another-agent", "b" * 32)

    env.agent()

    wait_until(lambda: mine not in env.runtime.containers, "the orphan removed")
    assert env.runtime.removed == [mine]
    assert env.runtime.running() == [theirs]  # another agent's container is left alone
    env.runtime.remove(theirs)


# --- the loop's pace -------------------------------------------------------------------------


def test_a_delayed_retry_starts_when_it_falls_due_not_at_the_next_poll(env: Env) -> None:
    attempts = iter([Behaviour(exit_code=1), QUICK])
    env.runtime.script = lambda spec: next(attempts)
    settings = env.settings.model_copy(update={"poll_interval": 3600.0})
    policy = RetryPolicy(base_delay=0.5, jitter=0.0)
    agent = Agent(settings, env.queue, env.runtime, env.capacity, policy=policy)
    env.agents.append(agent)
    agent.start()
    job = env.submit(max_retries=1)

    final = env.wait_final(job.id)  # within the test's deadline: long before an hour's poll

    assert (final.status, final.attempt_count) == (JobStatus.SUCCEEDED, 2)
    env.assert_clean()


def test_a_due_retry_that_cannot_start_does_not_make_the_loop_spin(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.runtime.script = by_env(fail=Behaviour(exit_code=1), default=FOREVER)
    blocked = env.submit(name="blocked", env={"ROLE": "fail"}, max_retries=1, priority=1)
    runner = env.submit(name="runner")
    one_slot = Capacity(slots=1, memory_bytes=64 * 2**30, cpus=64.0, gpu_ids=())
    policy = RetryPolicy(base_delay=1.0, jitter=0.0)  # `runner` takes the slot meanwhile
    agent = Agent(env.settings, env.queue, env.runtime, one_slot, policy=policy)
    env.agents.append(agent)
    agent.start()
    env.wait_status(runner.id, JobStatus.RUNNING)  # it took the slot after `blocked` failed
    waiting = env.job(blocked.id)
    assert waiting.status is JobStatus.QUEUED and waiting.not_before is not None
    due = waiting.not_before.timestamp()
    wait_until(lambda: time.time() > due + 0.2, "the retry due")

    claims = 0
    claim = env.queue.claim

    def counting(*args: Any, **kwargs: Any) -> Claim | None:
        nonlocal claims
        claims += 1
        return claim(*args, **kwargs)

    monkeypatch.setattr(env.queue, "claim", counting)
    time.sleep(1.0)
    monkeypatch.undo()

    # poll_interval is 0.1 s: about ten claims a second, not hundreds.
    assert claims < 50, f"{claims} claims in one second"
    env.end(env.container_of(runner.id))


# --- detach mode: an agent upgrade does not touch running training --------------------------


def test_a_detached_stop_leaves_the_job_running_and_the_next_agent_finishes_it(env: Env) -> None:
    output = [("stdout", f"step {i}") for i in range(5)]
    env.runtime.script = lambda spec: Behaviour(output=output, run_seconds=None)
    agent = env.agent()
    job = env.submit(max_retries=0)
    env.wait_status(job.id, JobStatus.RUNNING)
    wait_until(lambda: len(env.log_output(job.id)) == 5, "the output logged")
    container = env.container_of(job.id)
    [before] = env.queue.active_attempts(env.agent_id)

    agent.stop(timeout=10, detach=True)

    assert env.runtime.stops == []  # never stopped
    assert env.runtime.running() == [container]
    assert env.job(job.id).status is JobStatus.RUNNING  # not requeued
    assert env.queue.unreleased(env.agent_id)  # its resources stay held
    assert "detach mode" in env.agent_text(job.id)
    [held] = env.queue.active_attempts(env.agent_id)
    assert held.lease_token == before.lease_token
    # Another agent's janitor must not take it during the upgrade: the lease was extended.
    with env.queue.db.reading() as session:
        row = session.get(JobRow, job.id)
        assert row is not None and row.lease_expires_at is not None
        left = (row.lease_expires_at - datetime.now(UTC)).total_seconds()
    assert left > env.settings.detach_lease_seconds - 60 > env.settings.lease_seconds
    assert env.queue.expired() == []

    successor = env.agent()  # the upgraded agent, same id
    wait_until(lambda: successor.running_job_ids() == [job.id], "the container re-attached")
    env.end(container, 0)

    final = env.wait_final(job.id)
    assert (final.status, final.attempt_count) == (JobStatus.SUCCEEDED, 1)
    assert len(env.runtime.created) == 1
    assert env.log_output(job.id) == output  # no line lost, none doubled
    env.assert_clean()
