"""The queue's hot paths in SQL, on real SQLite and PostgreSQL: the claim statement chooses
exactly what the pure `pick` chooses, and group-committed submits keep every rule."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import String, bindparam, event, text, update
from sqlalchemy.dialects.postgresql import ARRAY

from agent.core.auth import Quota, QuotaExceeded
from agent.core.errors import QueueFull
from agent.core.records import NewJob
from agent.core.scheduling import Capacity, Demand, assign_gpus, pick
from agent.db.claims import _POSTGRES_CLAIM
from agent.db.engine import Database
from agent.db.jobstore import ANALYZE_FLOOR, Submit
from agent.db.migrate import upgrade
from agent.db.models import UTCDateTime, jobs
from agent.db.queue import JobQueue
from agent.db.tokens import TokenStore
from tests.conftest import PG_ADMIN_DSN

GiB = 2**30
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _new(**overrides: object) -> NewJob:
    values: dict[str, object] = {
        "name": "j",
        "image": "img",
        "command": None,
        "params": {},
        "env": {},
        "memory_bytes": GiB,
        "cpus": 1.0,
        "gpus": 0,
        "timeout_seconds": None,
        "max_retries": 0,
        "priority": 0,
    }
    values.update(overrides)
    return NewJob(**values)  # type: ignore[arg-type]


@pytest.fixture
def queue(database_url: str) -> Iterator[JobQueue]:
    if database_url.startswith("sqlite"):
        upgrade(database_url)
    db = Database(database_url)
    yield JobQueue(db)
    db.dispose()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_the_claim_statement_chooses_what_pick_chooses(queue: JobQueue) -> None:
    """Random queues (priorities, ages, delayed retries, sizes, GPUs) and random holdings:
    after every claim, the job taken is the one `pick` takes from the whole queue, with the
    GPUs `assign_gpus` gives, and nothing is taken when `pick` says nothing fits."""
    rng = random.Random(11)
    clock = Clock()
    queue.clock = clock
    capacity = Capacity(slots=3, memory_bytes=8 * GiB, cpus=4.0, gpu_ids=("0", "1", "2", "10"))
    checked = nothing = 0
    for scenario in range(12):
        agent = f"agent-{scenario}"
        queue.register_agent(agent, "host", capacity)  # so `agents()` shows what it holds
        demands: dict[str, Demand] = {}
        for n in range(rng.randint(3, 14)):
            clock.now = T0 + timedelta(seconds=scenario * 1000 + n)
            job = queue.submit(
                _new(
                    memory_bytes=rng.choice([1, 2, 4, 8, 16]) * GiB // 2,
                    cpus=rng.choice([0.5, 1.0, 2.0, 5.0]),
                    gpus=rng.choice([0, 0, 1, 2, 4, 5]),
                    priority=rng.choice([0, 0, 1, 5]),
                ),
                max_queued=10_000,
            )
            demands[job.id] = Demand(job.id, job.memory_bytes, job.cpus, job.gpus)
        delayed = rng.sample(sorted(demands), k=min(2, len(demands)))
        with queue.db.begin() as conn:
            for job_id in delayed:  # a retry due later, or already due
                due = clock.now + timedelta(seconds=rng.choice([-30, 30]))
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(not_before=due))
        clock.now += timedelta(seconds=60)
        starvation = rng.choice([None, 10.0, 100_000.0])
        for _ in range(4):
            expected = _expected(queue, agent, capacity, starvation, clock.now)
            claim = queue.claim(agent, capacity, lease_seconds=60, starvation_seconds=starvation)
            if expected is None:
                assert claim is None
                nothing += 1
                break
            assert claim is not None
            job_id, gpu_ids = expected
            assert (claim.job.id, claim.gpu_ids) == (job_id, gpu_ids)
            assert claim.attempt == 1 and claim.job.status.value == "starting"
            got = queue.get(job_id)
            assert [a.gpu_ids for a in got.attempts] == [list(gpu_ids)]
            checked += 1
            if rng.random() < 0.3:
                queue.release(agent, job_id, claim.attempt)
        with queue.db.begin() as conn:  # the next scenario starts from an empty queue
            conn.execute(update(jobs).where(jobs.c.status == "queued").values(status="cancelled"))
    assert checked >= 12 and nothing >= 1  # both branches were exercised


def _expected(
    queue: JobQueue, agent: str, capacity: Capacity, starvation: float | None, now: datetime
) -> tuple[str, tuple[str, ...]] | None:
    """What the pure scheduler would take: the whole queue in claim order, the ledger's free."""
    queued = [j for j in queue.list_jobs(status=None, limit=500)[0] if j.status.value == "queued"]
    due = [j for j in queued if j.not_before is None or j.not_before <= now]
    due.sort(key=lambda j: (-j.priority, j.created_at, j.id))
    held = [a for a in queue.agents() if a.id == agent]
    running, memory, cpus, gpus = 0, 0, 0.0, set()
    if held:
        running, memory, cpus = held[0].running, held[0].held_memory_bytes, held[0].held_cpus
        gpus = set(held[0].gpu_holders)
    free = capacity.remaining(count=running, memory_bytes=memory, cpus=cpus, gpus=gpus)
    if free.slots <= 0:
        return None
    chosen = pick(
        [
            Demand(j.id, j.memory_bytes, j.cpus, j.gpus, (j.not_before or j.created_at).timestamp())
            for j in due
        ],
        free,
        capacity=capacity.whole,
        now=now.timestamp(),
        starvation_seconds=starvation,
    )
    if chosen is None:
        return None
    return chosen.job_id, assign_gpus(free.gpu_ids, chosen.gpus)


def test_concurrent_submits_never_overshoot_the_bound_or_a_quota(queue: JobQueue) -> None:
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(
            pool.map(lambda n: _outcome(queue, _new(name=f"j{n}"), max_queued=20), range(80))
        )
    assert outcomes.count("ok") == 20
    assert outcomes.count("QueueFull") == 60
    assert queue.stats().counts["queued"] == 20

    quota = Quota(max_queued=7, max_gpus=None)
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(
            pool.map(
                lambda n: _outcome(
                    queue, _new(), max_queued=10_000, owner=f"u{n % 2}", quota=quota
                ),
                range(40),
            )
        )
    assert outcomes.count("ok") == 14  # 7 each for two owners
    assert outcomes.count("QuotaExceeded") == 26


def _outcome(queue: JobQueue, new: NewJob, **options: object) -> str:
    try:
        queue.submit(new, **options)  # type: ignore[arg-type]
    except (QueueFull, QuotaExceeded) as exc:
        return type(exc).__name__
    return "ok"


def test_one_idempotency_key_from_many_threads_makes_one_job(queue: JobQueue) -> None:
    with ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(
                lambda _: queue.submit_or_get(
                    _new(), max_queued=100, owner="alice", idempotency_key="sweep-7"
                ),
                range(32),
            )
        )
    ids = {job.id for job, _created in results}
    assert len(ids) == 1
    assert sum(created for _job, created in results) == 1
    assert queue.stats().total == 1
    [job] = queue.list_jobs()[0]
    assert [e.kind for e in queue.events(job.id)] == ["submitted"]


def test_one_batch_writes_each_submit_with_its_own_outcome(queue: JobQueue) -> None:
    """A batch as group commit hands it over: new jobs with labels and events, a repeated
    idempotency key answered with the first job, and refusals past the bound, in order."""
    batch = [
        Submit(_new(name=f"n{n}", labels={"n": str(n)}), 6, "api", "bob", None, None)
        for n in range(5)
    ]
    batch.insert(2, Submit(_new(name="keyed"), 6, "api", "bob", "k1", None))
    batch.insert(4, Submit(_new(name="again"), 6, "api", "bob", "k1", None))
    batch.append(Submit(_new(name="over"), 6, "api", "bob", None, None))
    outcomes = queue._write_submits(batch)
    assert [type(o).__name__ for o in outcomes] == ["tuple"] * 7 + ["QueueFull"]
    made = [o for o in outcomes if isinstance(o, tuple)]
    assert [created for _job, created in made] == [True] * 4 + [False] + [True] * 2
    assert made[4][0].id == made[2][0].id  # the repeated key: the first job back
    stored, total = queue.list_jobs(limit=50)
    assert total == 6
    assert {j.name: j.labels for j in stored} == {
        **{f"n{n}": {"n": str(n)} for n in range(5)},
        "keyed": {},
    }
    for job in stored:
        assert [e.kind for e in queue.events(job.id)] == ["submitted"]
        assert queue.get(job.id) == replace(job, attempts=[])


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A PostgreSQL database of its own, never analysed (the session's is shared)."""
    name = f"trainyard_test_analyze_{os.getpid()}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    upgrade(url)
    yield url
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _analyses(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(
            conn.scalar(
                text("SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'jobs'")
            )
            or 0
        )


def _claim_plan(db: Database) -> str:
    statement = text("EXPLAIN " + _POSTGRES_CLAIM.element.text).bindparams(  # type: ignore[attr-defined]
        bindparam("now", type_=UTCDateTime()),
        bindparam("expires", type_=UTCDateTime()),
        bindparam("starving", type_=UTCDateTime()),
        bindparam("gpu_ids", type_=ARRAY(String())),
    )
    now = datetime.now(UTC)
    params = {
        "agent": "a1",
        "token": "t",
        "now": now,
        "expires": now + timedelta(minutes=1),
        "slots": 4,
        "memory": 64 * GiB,
        "cpus": 16.0,
        "gpu_ids": [],
        "starving": None,
    }
    with db.engine.connect() as conn:
        return "\n".join(row[0] for row in conn.execute(statement, params))


def test_a_burst_of_submits_refreshes_postgres_statistics_so_a_claim_walks_the_index(
    fresh_pg_url: str,
) -> None:
    """A sweep submitted to a database whose statistics counted few queued jobs: planned from
    those, each claim read and sorted every queued job. The submits themselves ANALYZE once
    the queue has grown past the floor, and the claim then reads the claim index in order."""
    db = Database(fresh_pg_url)
    queue = JobQueue(db)
    try:
        assert _analyses(db) == 0
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: queue.submit(_new(), max_queued=10**6), range(ANALYZE_FLOOR)))
        deadline = time.monotonic() + 30
        while _analyses(db) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _analyses(db) >= 1
        plan = _claim_plan(db)
        assert "Sort" not in plan, plan
        assert "Index Scan using ix_jobs_claim on jobs j" in plan, plan
        claimed = queue.claim("a1", Capacity(4, 64 * GiB, 16.0, ()), lease_seconds=60)
        assert claimed is not None
    finally:
        db.dispose()


def test_a_batch_refuses_what_no_live_agent_could_run_reading_the_agents_once(
    queue: JobQueue,
) -> None:
    queue.register_agent("small", "host", Capacity(2, 4 * GiB, 4.0, ()))
    queue.register_agent("gone", "host", Capacity(2, 64 * GiB, 32.0, ("0",)))
    queue.agent_stopped("gone")  # it offered everything, but is no longer live
    beats = 5.0
    batch = [
        Submit(_new(name="fits", memory_bytes=GiB), 10, "api", None, None, None, beats),
        Submit(_new(name="too big", memory_bytes=8 * GiB), 10, "api", None, None, None, beats),
        Submit(_new(name="gpu", gpus=1), 10, "api", None, None, None, beats),
        Submit(_new(name="unchecked", gpus=1), 10, "api", None, None, None, None),
    ]
    reads: list[str] = []
    listen = lambda *args: reads.append(args[2]) if "FROM agents" in args[2] else None  # noqa: E731
    event.listen(queue.db.engine, "before_cursor_execute", listen)
    try:
        outcomes = queue._write_submits(batch)
    finally:
        event.remove(queue.db.engine, "before_cursor_execute", listen)
    assert [type(o).__name__ for o in outcomes] == ["tuple", *["InvalidJobSpec"] * 2, "tuple"]
    assert (
        str(outcomes[1]) == "resources.memory 8 GiB is more than any agent offers (largest: 4 GiB)"
    )
    assert "resources.gpus 1 is more than any agent has (largest: 0)" in str(outcomes[2])
    assert len(reads) == 1
    assert sorted(j.name for j in queue.list_jobs(limit=10)[0]) == ["fits", "unchecked"]


def test_a_batch_verifies_the_credentials_of_its_submits_in_one_read_each(
    queue: JobQueue,
) -> None:
    """Submits acting on what their API process last knew of a token (or of there being none)
    are checked inside the batch's transaction: tokens in one query, their existence in one."""
    tokens = TokenStore(queue.db)
    alice, _secret = tokens.create("alice")
    bob, _secret = tokens.create("bob")
    tokens.revoke(bob.id)

    def submit(name: str, **checks: Any) -> Submit:
        return Submit(_new(name=name), 10, "api", "x", None, None, **checks)

    batch = [
        submit("alice", token_id=alice.id),
        submit("bob", token_id=bob.id),
        submit("nobody", token_id="0" * 16),
        submit("local", single_user=True),
        submit("unchecked"),
    ]
    reads: list[str] = []
    listen = lambda *args: reads.append(args[2]) if "FROM tokens" in args[2] else None  # noqa: E731
    event.listen(queue.db.engine, "before_cursor_execute", listen)
    try:
        outcomes = queue._write_submits(batch)
    finally:
        event.remove(queue.db.engine, "before_cursor_execute", listen)
    assert [type(o).__name__ for o in outcomes] == [
        "tuple",
        *["InvalidToken"] * 3,
        "tuple",
    ]
    assert len(reads) == 2
    assert sorted(j.name for j in queue.list_jobs(limit=10)[0]) == ["alice", "unchecked"]
