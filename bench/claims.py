"""Claim throughput of the queue alone, and submit→running latency with three agent processes.

    python -m bench.claims [--jobs N] [--latency-jobs L] [--skip-docker]
                           [--db sqlite|postgres|both] [--poll-intervals 1.0,0.2]

1. claims: no Docker. N jobs (default 500, so the whole run stays near 3 minutes) are submitted
   with `JobQueue.submit`, then 1 or 4 "agents" (each its own `Database` engine and `JobQueue`,
   as separate agent processes would have) call `JobQueue.claim` from a common start until it
   returns None. Agents are threads (they share the GIL) or spawned processes (the realistic
   case). Variant "held": claims pile up unreleased in the ledger, so every claim sums more
   attempts. Variant "released": each claim is followed by `JobQueue.release` (steady state).
   Every job must be claimed exactly once (one attempt row per job). SQLAlchemy event listeners
   (measurement only) split each call's time: pool checkout, SQLite's write-lock wait, each kind
   of statement, commit, and the rest (Python: ORM, row loading).
2. latency: three real agents (`python run.py agent`, one process each, same poll interval), a
   PostgreSQL queue, the real engine. Single jobs (`true`) are submitted one at a time from this
   process, which is not an agent: LISTEN/NOTIFY wakes the agents, or their poll finds the job.
   Each submit waits a random fraction of the poll interval first, so it lands at a random phase
   of the agents' polling. submit→claim and submit→running, p50/p95, per poll interval.

Every database, directory and container the bench makes is removed at the end (bench.harness);
a container left behind by an agent is reported as a leak.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.synchronize
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from queue import Empty
from typing import Any, Literal

from sqlalchemy import event, text

from agent.config import DEFAULT_TRAIN_IMAGE
from agent.core.records import Job, NewJob
from agent.core.scheduling import Capacity
from agent.db.engine import Database
from agent.db.migrate import upgrade
from agent.db.queue import JobQueue
from bench.harness import (
    STOP,
    Bench,
    attempt_latencies,
    checkpoint,
    leak_check,
    ms,
    p50_p95,
    say,
    wait_final,
    wait_for,
)

RUN_PY = Path(__file__).resolve().parent.parent / "run.py"
HUGE = Capacity(slots=10**6, memory_bytes=2**50, cpus=1e6, gpu_ids=())
NOTHING_FITS = Capacity(slots=1, memory_bytes=0, cpus=0.0, gpu_ids=())  # warm-up: claims nothing
LEASE_SECONDS = 60.0
BARRIER_SECONDS = 120.0
CLAIM_PHASE_TIMEOUT_SECONDS = 600.0
MAX_WORKER_ERRORS = 20  # a worker gives up after this many failed claims
AGENT_COUNT = 3
AGENT_SLOTS = 2
AGENT_READY_SECONDS = 60.0
AGENT_STOP_SECONDS = 60.0
JOB_FINAL_SECONDS = 120.0
BENCH_POLL_SECONDS = 0.02  # the bench's own polling for a job's final state
LATENCY_MEMORY_BYTES = 128 * 2**20
LATENCY_CPUS = 0.25
TABLES = ("events", "gpu_holds", "attempts", "jobs", "agents")

Mode = Literal["threads", "processes"]
Shape = tuple[int, Mode, str]  # agents, how they run, label
SHAPES: list[Shape] = [
    (1, "threads", "1 thread"),
    (4, "threads", "4 threads"),
    (4, "processes", "4 processes"),
]


CLAIM_JOB = NewJob(
    name="b",
    image="img",
    command=None,
    params={},
    env={},
    memory_bytes=2**20,
    cpus=0.01,
    gpus=0,
    timeout_seconds=None,
    max_retries=0,
    priority=0,
)


def latency_job(index: int) -> NewJob:
    return replace(
        CLAIM_JOB,
        name=f"bench-claims-latency-{index}",
        image=DEFAULT_TRAIN_IMAGE,
        command=["true"],
        memory_bytes=LATENCY_MEMORY_BYTES,
        cpus=LATENCY_CPUS,
        timeout_seconds=120,
    )


# --- where a claim's time goes (measurement only) ------------------------------------------------

SEGMENTS = (
    "checkout",  # call → first statement: pool checkout (+ pre-ping on PostgreSQL), session
    "lock",  # SQLite's BEGIN IMMEDIATE: waiting for the write lock
    "ledger",  # SUM over this agent's unreleased attempts, and its GPU holds
    "pick",  # SELECT … queued … LIMIT 50 (FOR UPDATE SKIP LOCKED on PostgreSQL)
    "write",  # UPDATE jobs (compare-and-set), INSERT attempt, INSERT event
    "refresh",  # re-read of the claimed job row
    "commit",  # commit event → call returns
    "other",  # any other statement
    "python",  # everything else: ORM, row loading (JSON decoding), scheduling, GIL waits
)


def segment_of(statement: str) -> str:
    head = statement.lstrip()[:12].upper()
    if head.startswith("BEGIN"):
        return "lock"
    if head.startswith(("UPDATE", "INSERT", "DELETE")):
        return "write"
    if "FROM attempts" in statement or "FROM gpu_holds" in statement:
        return "ledger"
    if "LIMIT" in statement:
        return "pick"
    if "FROM jobs" in statement:
        return "refresh"
    return "other"


class ClaimProbe:
    """Splits the time of each queue call by SQLAlchemy cursor and commit events on one engine.

    One engine is used by one worker thread, so no locking is needed. Keys are
    "<call>.<segment>" (e.g. "claim.lock", "release.lock"), "<call>.total" and "<call>.calls".
    """

    def __init__(self, db: Database) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self._what = "other"
        self._first: float | None = None
        self._stmt_start = 0.0
        self._commit: float | None = None
        event.listen(db.engine, "before_cursor_execute", self._before)
        event.listen(db.engine, "after_cursor_execute", self._after)
        event.listen(db.engine, "commit", self._on_commit)

    def _before(self, *_args: Any) -> None:
        now = time.perf_counter()
        if self._first is None:
            self._first = now
        self._stmt_start = now

    def _after(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.seconds[f"{self._what}.{segment_of(statement)}"] += (
            time.perf_counter() - self._stmt_start
        )

    def _on_commit(self, _conn: Any) -> None:
        self._commit = time.perf_counter()

    @contextmanager
    def call(self, what: str) -> Iterator[None]:
        self._what = what
        start = time.perf_counter()
        self._first = self._commit = None
        try:
            yield
        finally:
            end = time.perf_counter()
            self.seconds[f"{what}.total"] += end - start
            self.seconds[f"{what}.calls"] += 1
            if self._first is not None:
                self.seconds[f"{what}.checkout"] += self._first - start
            if self._commit is not None:
                self.seconds[f"{what}.commit"] += end - self._commit
            self._what = "other"


# --- 1. claim throughput -------------------------------------------------------------------------


@dataclass
class WorkerResult:
    agent_id: str
    claims: int = 0
    started: float = 0.0  # time.monotonic() (system-wide on Linux, so comparable across processes)
    last: float = 0.0  # after the last successful claim (and release)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)  # ClaimProbe segments
    failed: str | None = None  # the worker could not run at all


def claim_loop(
    url: str,
    agent_id: str,
    release: bool,
    wait_start: Callable[[], Any],
    stopped: Callable[[], bool],
) -> WorkerResult:
    """One agent: its own engine; claim (and release) until the queue has nothing left."""
    result = WorkerResult(agent_id)
    db = Database(url)
    try:
        queue = JobQueue(db)
        queue.claim(agent_id, NOTHING_FITS, lease_seconds=LEASE_SECONDS)  # connect, compile
        probe = ClaimProbe(db)
        wait_start()
        result.started = result.last = time.monotonic()
        while not stopped():
            try:
                with probe.call("claim"):
                    claim = queue.claim(agent_id, HUGE, lease_seconds=LEASE_SECONDS)
                if claim is None:
                    break
                if release:
                    with probe.call("release"):
                        queue.release(agent_id, claim.job.id, claim.attempt)
            except Exception as exc:  # a product failure under contention: count it, go on
                first_line = (str(exc).splitlines() or [""])[0][:160]
                result.errors[f"{type(exc).__name__}: {first_line}"] += 1
                if sum(result.errors.values()) >= MAX_WORKER_ERRORS:
                    break
                continue
            result.claims += 1
            result.last = time.monotonic()
        result.seconds = dict(probe.seconds)
    finally:
        db.dispose()
    return result


def guarded_claim_loop(
    url: str, agent_id: str, release: bool, barrier: Any, stopped: Callable[[], bool]
) -> WorkerResult:
    """`claim_loop` behind a start barrier; a worker that fails breaks the barrier for all."""
    try:
        return claim_loop(url, agent_id, release, lambda: barrier.wait(BARRIER_SECONDS), stopped)
    except BaseException:
        barrier.abort()
        return WorkerResult(agent_id, failed=traceback.format_exc(limit=5))


def _process_main(
    url: str,
    agent_id: str,
    release: bool,
    barrier: multiprocessing.synchronize.Barrier,
    stop: multiprocessing.synchronize.Event,
    results: multiprocessing.Queue[WorkerResult],
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    results.put(guarded_claim_loop(url, agent_id, release, barrier, stop.is_set))


def run_threads(url: str, agents: list[str], release: bool) -> list[WorkerResult]:
    barrier = threading.Barrier(len(agents))
    results: dict[str, WorkerResult] = {}

    def work(agent_id: str) -> None:
        results[agent_id] = guarded_claim_loop(url, agent_id, release, barrier, STOP.is_set)

    threads = [threading.Thread(target=work, args=(a,), name=f"claims-{a}") for a in agents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CLAIM_PHASE_TIMEOUT_SECONDS)
        if thread.is_alive():
            raise TimeoutError(f"{thread.name} still claiming after the phase timeout")
    return [results[a] for a in agents]


def run_processes(url: str, agents: list[str], release: bool) -> list[WorkerResult]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(agents))
    stop = ctx.Event()
    outbox: multiprocessing.Queue[WorkerResult] = ctx.Queue()
    procs = [
        ctx.Process(
            target=_process_main,
            args=(url, agent_id, release, barrier, stop, outbox),
            name=f"claims-{agent_id}",
        )
        for agent_id in agents
    ]
    for proc in procs:
        proc.start()
    results: list[WorkerResult] = []
    deadline = time.monotonic() + CLAIM_PHASE_TIMEOUT_SECONDS
    try:
        while len(results) < len(procs):
            checkpoint()
            with suppress(Empty):
                results.append(outbox.get(timeout=0.5))
                continue
            if time.monotonic() > deadline:
                raise TimeoutError("claim processes still running after the phase timeout")
            if all(not proc.is_alive() for proc in procs) and outbox.empty():
                raise RuntimeError("a claim process died without a result")
    finally:
        stop.set()
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
    order = {agent_id: i for i, agent_id in enumerate(agents)}
    return sorted(results, key=lambda r: order[r.agent_id])


@dataclass(frozen=True)
class Check:
    jobs: int
    queued_left: int
    attempts: int
    jobs_with_attempts: int
    duplicates: int  # jobs with more than one attempt row
    # Queue order (priority, then age) against claim order (attempt row ids): how far ahead of
    # the oldest job still queued a claimed job was, at most, and how many claims were not it.
    max_jump: int
    out_of_order: int

    @property
    def ok(self) -> bool:
        return (
            self.queued_left == 0
            and self.duplicates == 0
            and self.attempts == self.jobs == self.jobs_with_attempts
        )


def check_once(db: Database) -> Check:
    with db.reading() as s:

        def one(query: str) -> int:
            return int(s.execute(text(query)).scalar_one())

        return Check(
            jobs=one("SELECT count(*) FROM jobs"),
            queued_left=one("SELECT count(*) FROM jobs WHERE status = 'queued'"),
            attempts=one("SELECT count(*) FROM attempts"),
            jobs_with_attempts=one("SELECT count(DISTINCT job_id) FROM attempts"),
            duplicates=one(
                "SELECT count(*) FROM "
                "(SELECT job_id FROM attempts GROUP BY job_id HAVING count(*) > 1) AS d"
            ),
            **claim_order(
                list(s.scalars(text("SELECT id FROM jobs ORDER BY priority DESC, created_at, id"))),
                list(s.scalars(text("SELECT job_id FROM attempts ORDER BY id"))),
            ),
        )


def claim_order(queue_order: list[str], claimed: list[str]) -> dict[str, int]:
    """Each claim against the oldest job still queued at that moment (all jobs run once)."""
    rank = {job_id: i for i, job_id in enumerate(queue_order)}
    taken = [False] * len(queue_order)
    oldest = max_jump = out_of_order = 0
    for job_id in claimed:
        r = rank[job_id]
        taken[r] = True
        max_jump = max(max_jump, r - oldest)
        out_of_order += r != oldest
        while oldest < len(taken) and taken[oldest]:
            oldest += 1
    return {"max_jump": max_jump, "out_of_order": out_of_order}


@dataclass(frozen=True)
class ClaimRun:
    db: str
    label: str  # "1 thread", "4 threads", "4 processes"
    release: bool
    jobs: int
    submit_seconds: float
    seconds: float
    workers: list[WorkerResult]
    check: Check

    @property
    def claims(self) -> int:
        return sum(w.claims for w in self.workers)

    @property
    def rate(self) -> float:
        return self.claims / self.seconds if self.seconds > 0 else float("nan")

    @property
    def errors(self) -> Counter[str]:
        return sum((w.errors for w in self.workers), Counter())

    def breakdown(self, what: str) -> dict[str, float]:
        """Mean milliseconds per `what` call ("claim" or "release"), by segment, and "total"."""
        seconds: defaultdict[str, float] = defaultdict(float)
        for worker in self.workers:
            for key, value in worker.seconds.items():
                seconds[key] += value
        calls = max(1.0, seconds[f"{what}.calls"])
        split = {
            name: seconds[f"{what}.{name}"] / calls * 1000
            for name in (*SEGMENTS, "total")
            if name != "python"
        }
        measured = sum(v for k, v in split.items() if k != "total")
        split["python"] = max(0.0, split["total"] - measured)
        return split


def reset_database(db: Database) -> None:
    with db.transaction() as s:
        if db.is_sqlite:
            for table in TABLES:
                s.execute(text(f"DELETE FROM {table}"))
        else:
            s.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))


def submit_jobs(queue: JobQueue, count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        if i % 100 == 0:
            checkpoint()
        queue.submit(CLAIM_JOB, max_queued=count + 10, actor="bench")
    return time.perf_counter() - started


def measure_claims(
    db_name: str, url: str, jobs: int, shape: Shape, release: bool, prefix: str
) -> ClaimRun:
    agents, mode, label = shape
    admin = Database(url)
    try:
        reset_database(admin)
        submit_seconds = submit_jobs(JobQueue(admin), jobs)
        ids = [f"{prefix}-{i}" for i in range(agents)]
        runner = run_threads if mode == "threads" else run_processes
        workers = runner(url, ids, release)
        checkpoint()  # an interrupted run is not a measurement
        for worker in workers:
            if worker.failed:
                raise RuntimeError(f"claim worker {worker.agent_id} failed:\n{worker.failed}")
        started = min(w.started for w in workers)
        seconds = max(w.last for w in workers) - started
        check = check_once(admin)
    finally:
        admin.dispose()
    return ClaimRun(db_name, label, release, jobs, submit_seconds, seconds, workers, check)


def describe_claims(run: ClaimRun) -> None:
    variant = "released" if run.release else "held"
    per_agent = "/".join(str(w.claims) for w in run.workers)
    say(
        f"  {run.db:8} {run.label:11} {variant:8}: {run.claims} claims in {run.seconds:.2f} s"
        f" = {run.rate:,.0f}/s (per agent {per_agent}); "
        f"submit {run.jobs / run.submit_seconds:.0f}/s; duplicates {run.check.duplicates}, "
        f"{'ok' if run.check.ok else 'CHECK FAILED'}; out of queue order "
        f"{run.check.out_of_order} (at most {run.check.max_jump} ahead)"
    )
    for what in ("claim", "release") if run.release else ("claim",):
        split = run.breakdown(what)
        parts = "  ".join(f"{name} {split[name]:.2f}" for name in SEGMENTS if split.get(name))
        say(f"      {what} {split['total']:.2f} ms/call = {parts}")
    if not run.check.ok:
        say(f"      CHECK: {run.check}")
    for message, count in run.errors.most_common(5):
        say(f"      ERROR x{count}: {message}")


def claims_phase(args: argparse.Namespace, bench: Bench, results: list[ClaimRun]) -> None:
    for db_name in args.dbs:
        with bench.database(db_name) as url:
            upgrade(url)
            for shape in SHAPES:
                for release in (False, True):
                    checkpoint()
                    run = measure_claims(
                        db_name, url, args.jobs, shape, release, bench.agent_id("claims")
                    )
                    results.append(run)
                    describe_claims(run)


# --- 2. submit → running latency with three agent processes -------------------------------------


@dataclass
class LatencyRun:
    poll_interval: float
    jobs: list[Job]
    leaked: int
    agent_exit_codes: list[int | None]
    stop_seconds: float  # SIGTERM → all three agents exited
    problems: list[str]  # warnings and errors in the agents' logs

    def __post_init__(self) -> None:
        self.claim, self.running, self.claim_to_running = attempt_latencies(self.jobs)

    def by_agent(self) -> Counter[str]:
        return Counter(j.attempts[0].agent_id.rsplit("-", 1)[-1] for j in self.jobs if j.attempts)

    def outcomes(self) -> Counter[str]:
        return Counter(j.status.value for j in self.jobs)


class AgentFleet:
    """Three `python run.py agent` in their own processes; SIGTERM and wait on the way out."""

    def __init__(self, url: str, prefix: str, tmp: Path, poll_interval: float) -> None:
        self.ids = [f"{prefix}-{i}" for i in range(1, AGENT_COUNT + 1)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        base = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
        for agent_id in self.ids:
            home = tmp / agent_id
            home.mkdir(parents=True)
            env = base | {
                "TRAINYARD_DATABASE_URL": url,
                "TRAINYARD_AGENT_ID": agent_id,
                "TRAINYARD_DATA_DIR": str(home / "data"),
                "TRAINYARD_LOG_DIR": str(home / "logs"),
                "TRAINYARD_MAX_CONCURRENT_JOBS": str(AGENT_SLOTS),
                "TRAINYARD_GPUS": "none",
                "TRAINYARD_DEFAULT_MEMORY": "128m",
                "TRAINYARD_DEFAULT_CPUS": str(LATENCY_CPUS),
                "TRAINYARD_POLL_INTERVAL": str(poll_interval),
            }
            log_path = home / "agent.log"
            self.logs.append(log_path)
            with log_path.open("wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, str(RUN_PY), "agent"],
                        cwd=home,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )

    def wait_registered(self, queue: JobQueue) -> None:
        def ready() -> bool:
            for proc, log_path in zip(self.procs, self.logs, strict=True):
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"agent exited with {proc.returncode}:\n{self._tail(log_path)}"
                    )
            now = datetime.now(UTC)
            fresh = {
                a.id
                for a in queue.agents()
                if a.stopped_at is None and (now - a.heartbeat_at).total_seconds() < 10
            }
            return fresh >= set(self.ids)

        wait_for(ready, seconds=AGENT_READY_SECONDS, interval=0.1, what="agents not registered")

    def stop(self) -> list[int | None]:
        """SIGTERM all, wait; their exit codes (None: killed after AGENT_STOP_SECONDS)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for proc, log_path in zip(self.procs, self.logs, strict=True):
            try:
                codes.append(proc.wait(AGENT_STOP_SECONDS))
            except subprocess.TimeoutExpired:
                say(f"  agent pid {proc.pid} ignored SIGTERM for {AGENT_STOP_SECONDS:.0f}s: killed")
                proc.kill()
                proc.wait()
                codes.append(None)
            if codes[-1] not in (0, None):
                say(f"  agent pid {proc.pid} exited {codes[-1]}:\n{self._tail(log_path)}")
        return codes

    def problems(self) -> list[str]:
        """Warnings, errors and tracebacks in the agents' own logs."""
        found = []
        for agent_id, path in zip(self.ids, self.logs, strict=True):
            with suppress(OSError):
                for line in path.read_text(errors="replace").splitlines():
                    if any(word in line for word in (" WARNING ", " ERROR ", "Traceback")):
                        found.append(f"{agent_id}: {line[:200]}")
        return found

    @staticmethod
    def _tail(path: Path, lines: int = 15) -> str:
        with suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


def measure_latency(
    bench: Bench, poll_interval: float, count: int, rng: random.Random
) -> LatencyRun:
    home = bench.tmp / f"latency-{poll_interval:g}"
    with bench.database("postgres") as url:
        upgrade(url)  # before the agents: three of them migrating one empty database would race
        db = Database(url)
        fleet = AgentFleet(url, bench.agent_id("latency"), home, poll_interval)
        jobs: list[Job] = []
        codes: list[int | None] = []
        try:
            queue = JobQueue(db)
            fleet.wait_registered(queue)
            for i in range(count):
                # Arrive at a random phase of the agents' polling, as real submissions do.
                time.sleep(rng.uniform(0.0, poll_interval))
                checkpoint()
                job = queue.submit(latency_job(i), max_queued=count + 10, actor="bench")
                jobs.append(
                    wait_final(
                        queue.get, job.id, seconds=JOB_FINAL_SECONDS, interval=BENCH_POLL_SECONDS
                    )
                )
        finally:
            stopping = time.monotonic()
            codes = fleet.stop()
            stop_seconds = time.monotonic() - stopping
            problems = fleet.problems()
            db.dispose()
            leaked = leak_check(bench.runner, bench.prefix)
            shutil.rmtree(home, ignore_errors=True)
    return LatencyRun(poll_interval, jobs, leaked, codes, stop_seconds, problems)


def describe_latency(run: LatencyRun) -> None:
    say(
        f"  poll {run.poll_interval:g} s: {len(run.jobs)} jobs {dict(run.outcomes())}; "
        f"claimed by agent {dict(sorted(run.by_agent().items()))}"
    )
    say(
        f"    submit→claim {p50_p95(run.claim)} ms | submit→running {p50_p95(run.running)} ms"
        f" | claim→running {p50_p95(run.claim_to_running)} ms"
        f" | max submit→claim {ms(max(run.claim, default=0.0))} ms"
    )
    say(
        f"    SIGTERM → agents exited in {run.stop_seconds:.1f} s with {run.agent_exit_codes}; "
        f"leaked containers {run.leaked}; warnings/errors in agent logs {len(run.problems)}"
    )
    for line in run.problems[:10]:
        say(f"      {line}")


# --- the summary ----------------------------------------------------------------------------------


def _cell(run: ClaimRun | None, width: int, *, claim_ms: bool = False) -> str:
    """Claims per second, or mean ms per claim call, of one run for the summary table."""
    if run is None:
        return f"{'-':>{width}}"
    if claim_ms:
        return f"{run.breakdown('claim')['total']:>{width},.1f}"
    return f"{run.rate:>{width},.0f}"


def summary(
    args: argparse.Namespace,
    facts: dict[str, str],
    claims: list[ClaimRun],
    latency: list[LatencyRun],
) -> None:
    say()
    say("=" * 100)
    say("bench.claims summary — " + ", ".join(f"{k} {v}" for k, v in facts.items()))
    if claims:
        say(f"1. claim throughput, {args.jobs} jobs per run, no Docker; claims/s of all agents,")
        say("   mean ms per claim call, most a claim ran ahead of the oldest queued job:")
        say(
            f"   {'db':8} {'agents':12} {'held/s':>7} {'released/s':>10} {'ms held':>8} "
            f"{'ms rel.':>8} {'ahead':>6} {'submit/s':>8} {'duplicates':>10}  check"
        )
        keys = list(dict.fromkeys((r.db, r.label) for r in claims))
        for db_name, label in keys:
            runs = {r.release: r for r in claims if (r.db, r.label) == (db_name, label)}
            held, released = runs.get(False), runs.get(True)
            dups = sum(r.check.duplicates for r in runs.values())
            ok = all(r.check.ok for r in runs.values()) and not any(r.errors for r in runs.values())
            ahead = max(r.check.max_jump for r in runs.values())
            submit = statistics.fmean(r.jobs / r.submit_seconds for r in runs.values())
            say(
                f"   {db_name:8} {label:12} {_cell(held, 7)} {_cell(released, 10)} "
                f"{_cell(held, 8, claim_ms=True)} {_cell(released, 8, claim_ms=True)} {ahead:>6} "
                f"{submit:>8,.0f} {dups:>10}  {'ok' if ok else 'FAILED'}"
            )
        say(
            "   held: claims pile up unreleased; released: claim then release, both in the time."
            " check: one attempt per job, none left queued, no errors"
        )
    if latency:
        say(
            f"2. submit→running, {AGENT_COUNT} agent processes x {AGENT_SLOTS} slots, PostgreSQL,"
            " `true`; a submit from another process wakes the agents through LISTEN/NOTIFY"
        )
        for run in latency:
            say(
                f"   poll {run.poll_interval:>4g} s: submit→claim {p50_p95(run.claim)} ms, "
                f"submit→running {p50_p95(run.running)} ms, "
                f"claim→running {p50_p95(run.claim_to_running)} ms (n={len(run.claim)}); "
                f"outcomes {dict(run.outcomes())}; stop {run.stop_seconds:.1f} s; "
                f"leaks {run.leaked}; log warnings {len(run.problems)}"
            )


# --- the run -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.claims",
        description="Claim throughput of the queue, and submit→running latency of 3 agents.",
    )
    parser.add_argument("--jobs", type=int, default=500, help="jobs per claim-throughput run")
    parser.add_argument("--latency-jobs", type=int, default=20, help="single jobs per latency run")
    parser.add_argument("--skip-docker", action="store_true", help="only the claim throughput")
    parser.add_argument("--skip-claims", action="store_true", help="only the latency")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--poll-intervals",
        default="1.0,0.2",
        help="TRAINYARD_POLL_INTERVAL of the agents, one latency run each (default 1.0,0.2)",
    )
    args = parser.parse_args(argv)
    if min(args.jobs, args.latency_jobs) < 1:
        parser.error("--jobs and --latency-jobs must be at least 1")
    args.dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    try:
        args.polls = [float(p) for p in args.poll_intervals.split(",") if p.strip()]
    except ValueError:
        parser.error("--poll-intervals takes numbers like 1.0,0.2")
    if not args.polls or min(args.polls) <= 0:
        parser.error("--poll-intervals must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench("claims", engine=not args.skip_docker)
    return bench.run(lambda: run(args, bench))


def run(args: argparse.Namespace, bench: Bench) -> int:
    claims: list[ClaimRun] = []
    latency: list[LatencyRun] = []
    try:
        if not args.skip_claims:
            say(f"[1] claim throughput: {args.jobs} jobs per run, db {'+'.join(args.dbs)}")
            claims_phase(args, bench, claims)
        if bench.engine:
            rng = random.Random()
            for poll in args.polls:
                say(
                    f"[2] latency: {AGENT_COUNT} agents (`run.py agent`, poll {poll:g} s), "
                    f"{args.latency_jobs} jobs one at a time"
                )
                latency.append(measure_latency(bench, poll, args.latency_jobs, rng))
                describe_latency(latency[-1])
    finally:
        summary(args, bench.facts, claims, latency)
    failed = any(not r.check.ok or r.errors for r in claims) or any(r.leaked for r in latency)
    return 1 if failed else 0


if __name__ == "__main__":
    # Run the importable module, not `__main__`: spawned claim processes find its functions there.
    from bench import claims as _claims  # noqa: PLW0406

    sys.exit(_claims.main())
