"""The next job's container, created while every slot is busy (agent/worker/prepare.py): used
only by the attempt that claims its job, discarded otherwise, never leaked; and the back-off
on misses (agent/core/prepare.py)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import Settings
from agent.core.jobs import JobStatus
from agent.core.prepare import MAX_SKIPS, MIN_HIT_RATE, PrepareOdds
from agent.core.records import Claim, Job
from agent.runtime.base import ATTEMPT_LABEL, JOB_LABEL
from agent.worker.container_spec import container_spec, outputs_path
from agent.worker.prepare import Preparer
from tests.unit.test_agent_fake import FOREVER, Env, env, wait_until

__all__ = ["env"]  # the fixture, shared with test_agent_fake


@pytest.fixture(autouse=True)
def prepare_on(env: Env) -> None:
    """Whatever TRAINYARD_PREPARE_NEXT the environment running the tests has."""
    env.settings = env.settings.model_copy(update={"prepare_next": True})


def chances(odds: PrepareOdds, n: int) -> list[bool]:
    return [odds.should_prepare() for _ in range(n)]


def test_odds_back_off_after_misses_and_reset_on_a_hit() -> None:
    odds = PrepareOdds()
    assert chances(odds, 3) == [True, True, True]
    odds.record(used=False)
    assert chances(odds, 2) == [False, True]  # one chance let go after the first miss
    odds.record(used=False)
    assert chances(odds, 4) == [False, False, False, True]  # three after the second
    odds.record(used=True)
    assert chances(odds, 2) == [True, True]


def test_odds_back_off_is_bounded() -> None:
    odds = PrepareOdds()
    for _ in range(20):
        odds.record(used=False)
    assert chances(odds, MAX_SKIPS + 1) == [False] * MAX_SKIPS + [True]


def test_odds_below_the_hit_rate_only_probe_and_recover_with_hits() -> None:
    # Agents sharing a queue lose most of what they prepare: then only every 8th chance.
    odds = PrepareOdds(hit_rate=0.4)
    assert chances(odds, 17) == [True] + [False] * 7 + [True] + [False] * 7 + [True]
    for _ in range(3):
        odds.record(used=True)  # 0.4 -> 0.55 -> 0.66 -> 0.75
    assert odds.hit_rate > MIN_HIT_RATE
    assert chances(odds, 3) == [True, True, True]


def prepared_containers(env: Env) -> list[str]:
    """Containers that exist but never started (created ahead)."""
    return [cid for cid, c in env.runtime.containers.items() if c.status == "created"]


def test_a_busy_agent_prepares_the_next_job_and_its_claim_starts_that_container(
    env: Env,
) -> None:
    env.runtime.script = lambda spec: FOREVER
    running = [env.submit(name=f"busy{i}") for i in range(2)]
    agent = env.agent()
    wait_until(lambda: len(env.runtime.running()) == 2, "slots filled")
    third = env.submit(name="next")
    wait_until(lambda: len(prepared_containers(env)) == 1, "next container prepared")
    [prepared] = prepared_containers(env)
    spec = env.runtime.containers[prepared].spec
    assert (spec.labels[JOB_LABEL], spec.labels[ATTEMPT_LABEL]) == (third.id, "1")
    assert spec.name.startswith(f"trainyard-{third.id}-1-p")  # not the usual name
    assert env.job(third.id).status is JobStatus.QUEUED  # nothing claimed, nothing held
    assert env.queue.unreleased(env.agent_id) == {(j.id, 1) for j in running}
    assert agent.preparer is not None
    assert agent.preparer.keys() == {(third.id, 1)}

    env.end(env.container_of(running[0].id))
    env.wait_status(third.id, JobStatus.RUNNING)
    assert env.container_of(third.id) == prepared
    assert len(env.runtime.created) == 3  # no second container for the third job
    assert "created while the slot was busy" in env.agent_text(third.id)
    for job in (running[1], third):
        env.end(env.container_of(job.id))
        env.wait_final(job.id)
    env.assert_clean()


def test_a_busy_agent_prepares_one_job_per_slot_in_queue_order(env: Env) -> None:
    env.runtime.script = lambda spec: FOREVER
    running = [env.submit(name=f"busy{i}") for i in range(2)]
    agent = env.agent()
    wait_until(lambda: len(env.runtime.running()) == 2, "slots filled")
    waiting = [env.submit(name=f"next{i}") for i in range(4)]
    wait_until(lambda: len(prepared_containers(env)) == 2, "two prepared")
    time.sleep(0.3)
    assert len(prepared_containers(env)) == 2  # one per slot, no more
    assert agent.preparer is not None
    assert agent.preparer.keys() == {(waiting[0].id, 1), (waiting[1].id, 1)}

    for job in running:
        env.end(env.container_of(job.id))
    for job in waiting[:2]:
        env.wait_status(job.id, JobStatus.RUNNING)
    wait_until(
        lambda: (
            agent.preparer is not None
            and agent.preparer.keys() == {(waiting[2].id, 1), (waiting[3].id, 1)}
        ),
        "the next two prepared",
    )
    names = [spec.name for spec in env.runtime.created]
    assert len(names) == 6, names  # one container per job, none twice
    for job in waiting:
        env.wait_status(job.id, JobStatus.RUNNING, JobStatus.QUEUED)
    while not all(env.job(j.id).status.is_final for j in waiting):
        for cid in env.runtime.running():
            env.end(cid)
        time.sleep(0.02)
    env.assert_clean()
    assert len(env.runtime.created) == 6


def test_a_prepared_job_cancelled_before_its_claim_leaves_no_container_or_directory(
    env: Env,
) -> None:
    env.runtime.script = lambda spec: FOREVER
    running = [env.submit(name=f"busy{i}") for i in range(2)]
    env.agent()
    wait_until(lambda: len(env.runtime.running()) == 2, "slots filled")
    doomed = env.submit(name="doomed")
    wait_until(lambda: len(prepared_containers(env)) == 1, "next container prepared")
    assert outputs_path(env.settings, doomed.id).is_dir()
    env.queue.request_cancel(doomed.id, "test")
    later = env.submit(name="later")

    env.end(env.container_of(running[0].id))
    env.wait_status(later.id, JobStatus.RUNNING)  # the claim passed over the doomed job
    env.end(env.container_of(running[1].id))  # the next claim finds nothing: a miss
    wait_until(lambda: len(env.runtime.removed) >= 3, "the prepared container removed")
    assert doomed.id not in {c.spec.labels[JOB_LABEL] for c in env.runtime.containers.values()}
    assert not outputs_path(env.settings, doomed.id).exists()
    assert env.job(doomed.id).attempt_count == 0
    env.end(env.container_of(later.id))
    env.wait_final(later.id)
    env.assert_clean()


def test_stop_removes_the_prepared_container(env: Env) -> None:
    env.runtime.script = lambda spec: FOREVER
    for i in range(3):
        env.submit(name=f"j{i}")
    agent = env.agent()
    wait_until(lambda: len(prepared_containers(env)) == 1, "next container prepared")
    agent.stop(timeout=10)
    env.assert_clean()
    assert env.queue.list_jobs(status=JobStatus.QUEUED)[1] == 3


def test_reconcile_leaves_a_live_prepared_container_and_removes_one_a_crash_left(
    env: Env,
) -> None:
    env.runtime.script = lambda spec: FOREVER
    for i in range(3):
        env.submit(name=f"j{i}")
    agent = env.agent()
    wait_until(lambda: len(prepared_containers(env)) == 1, "next container prepared")
    [prepared] = prepared_containers(env)
    agent.reconcile()
    assert prepared in env.runtime.containers

    # A new process with the same agent id (the first one "crashed": its preparer is gone).
    successor = env.agent(start=False)
    successor.reconcile()
    assert prepared not in env.runtime.containers


def job_like(env: Env, **changes: object) -> Job:
    job = env.submit(name="peeked")
    return replace(env.job(job.id), **changes)  # type: ignore[arg-type]


def preparer(env: Env, peeked: Job | None, limit: int = 1) -> Preparer:
    return Preparer(
        env.settings,
        env.runtime,
        lambda exclude: peeked if peeked is not None and peeked.id not in exclude else None,
        limit=limit,
    )


def spec_for(settings: Settings, job: Job, number: int = 1) -> object:
    return container_spec(Claim(job, number, "token", (), settings.agent_id), settings)


def test_an_attempt_takes_a_prepared_container_only_if_it_is_exactly_its_own(env: Env) -> None:
    job = job_like(env)
    prep = preparer(env, job)
    prep.prepare()
    wait_until(lambda: len(env.runtime.created) == 1, "created")
    changed = replace(job, env={"X": "1"})
    wait_until(lambda: prep.keys() == {(job.id, 1)}, "registered")
    assert prep.take(spec_for(env.settings, changed)) is None  # type: ignore[arg-type]
    assert env.runtime.containers == {}  # removed, not left for anyone
    prep.prepare()  # a miss: this chance is let go
    assert len(env.runtime.created) == 1
    prep.prepare()
    wait_until(lambda: len(env.runtime.created) == 2, "created again")
    wait_until(lambda: prep.keys() == {(job.id, 1)}, "registered")
    taken = prep.take(spec_for(env.settings, job))  # type: ignore[arg-type]
    assert taken is not None and taken in env.runtime.containers
    assert prep.keys() == set()
    prep.close()
    assert taken in env.runtime.containers  # the attempt's now, not the preparer's
    env.runtime.remove(taken)


def test_jobs_with_gpus_or_a_workdir_are_not_prepared(env: Env) -> None:
    for job in (job_like(env, gpus=1), job_like(env, workdir="ab" * 32)):
        prep = preparer(env, job)
        prep.prepare()
        prep.close()
    assert env.runtime.created == []


def test_a_claim_since_the_peek_makes_the_preparation_stale(env: Env) -> None:
    job = job_like(env)
    slow_peek_started = []

    def peek(exclude: object) -> Job:
        slow_peek_started.append(True)
        time.sleep(0.2)  # the loop's claim lands meanwhile
        return job

    prep = Preparer(env.settings, env.runtime, peek)
    prep.prepare()
    wait_until(lambda: bool(slow_peek_started), "peeking")
    prep.claimed((job.id, 1))
    prep.close()
    assert env.runtime.created == []  # it may have been that very job: nothing created


def test_a_failed_create_is_a_missed_chance_only(env: Env, tmp_path: Path) -> None:
    job = job_like(env)
    env.runtime.engine_down = True
    prep = preparer(env, job)
    prep.prepare()
    wait_until(lambda: prep.keys() == set() and not prep._preparing, "given up")
    env.runtime.engine_down = False
    assert prep.take(spec_for(env.settings, job)) is None  # type: ignore[arg-type]
    prep.close()
    assert env.runtime.containers == {}


def test_repeated_misses_put_preparing_on_hold(env: Env) -> None:
    job = job_like(env)
    prep = preparer(env, job)
    creates = []
    for n in range(12):
        before = len(env.runtime.created)
        prep.prepare()
        wait_until(lambda: not prep._preparing, "prepared")
        if len(env.runtime.created) > before:
            creates.append(n)
        prep.claimed(("another-job", 1))  # someone else's job each time: a miss
    prep.close()
    assert creates == [0, 2, 6]  # 1, then 3 chances let go between tries
    wait_until(lambda: env.runtime.containers == {}, "every miss removed")


def test_prepare_next_off_creates_nothing_ahead(env: Env) -> None:
    env.settings = env.settings.model_copy(update={"prepare_next": False})
    env.runtime.script = lambda spec: FOREVER
    for i in range(3):
        env.submit(name=f"j{i}")
    agent = env.agent()
    wait_until(lambda: len(env.runtime.running()) == 2, "slots filled")
    time.sleep(0.5)
    assert agent.preparer is None
    assert prepared_containers(env) == []


def test_a_job_passed_over_by_more_claims_than_slots_is_discarded(env: Env) -> None:
    jobs = [env.submit(name=f"j{i}") for i in range(5)]
    gone: set[str] = set()  # claimed (by the "agent" below): no longer queued

    def peek(exclude: object) -> Job | None:
        assert isinstance(exclude, set)
        rest = [j for j in jobs if j.id not in exclude and j.id not in gone]
        return rest[0] if rest else None

    prep = Preparer(env.settings, env.runtime, peek, limit=2)

    def fill() -> None:
        prep.prepare()
        wait_until(lambda: not prep._preparing, "filled")

    def claim(job: Job) -> str | None:
        gone.add(job.id)
        prep.claimed((job.id, 1))
        return prep.take(spec_for(env.settings, job))  # type: ignore[arg-type]

    first = jobs[0]  # stays prepared, but the queue hands this agent the jobs after it
    fill()
    assert prep.keys() == {(first.id, 1), (jobs[1].id, 1)}
    for n, job in enumerate(jobs[1:4], start=1):
        assert claim(job) is not None  # each a hit
        kept = (first.id, 1) in prep._live  # (keys() also has those being removed)
        assert kept is (n <= 2), n  # passed over twice (the slots): kept; a third time: gone
        fill()
    prep.close()
    for container_id in list(env.runtime.containers):
        env.runtime.remove(container_id)


def test_a_claimed_container_is_its_attempts_even_before_the_attempt_takes_it(env: Env) -> None:
    # Slots free together: the loop claims both prepared jobs, and then a third claim finds
    # another job (a miss), all before either attempt's thread asks for its container.
    jobs = [env.submit(name=f"j{i}") for i in range(2)]

    def peek(exclude: object) -> Job | None:
        assert isinstance(exclude, set)
        rest = [j for j in jobs if j.id not in exclude]
        return rest[0] if rest else None

    prep = Preparer(env.settings, env.runtime, peek, limit=2)
    prep.prepare()
    wait_until(lambda: not prep._preparing and len(env.runtime.created) == 2, "both prepared")
    for job in jobs:
        prep.claimed((job.id, 1))
    prep.claimed(("someone-elses", 1))
    taken = [prep.take(spec_for(env.settings, job)) for job in jobs]  # type: ignore[arg-type]
    assert None not in taken and set(taken) == set(env.runtime.containers)
    assert env.runtime.removed == []
    prep.close()
    for container_id in taken:
        assert container_id is not None
        env.runtime.remove(container_id)
