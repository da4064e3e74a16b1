"""Throughput and latency of Trainyard against direct docker-py, on the same engine.

    python -m bench.throughput [--jobs N] [--concurrency C] [--db sqlite|postgres] [--http]
                               [--latency-jobs L] [--rounds R]

1. direct docker-py: N containers (`true`) created / started / waited / logs read / removed,
   C at a time. Each is the container the agent would create for the same job: the product's
   `container_spec` of the job `resolve`d from the same `JobSpec`, created by `DockerRunner`.
2. trainyard: the same N jobs submitted through the real service and run by a real embedded
   agent with C slots, until every job is final and every container removed.
3. latency: with the agent idle, single jobs one after another: submit→claim, submit→running,
   against the engine's own create+start time for a direct container.

Every container the bench creates is labelled and removed, also on Ctrl-C or an error; the end
of the run checks that none is left.
"""

from __future__ import annotations

import argparse
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event, func, select

from agent.config import Settings
from agent.core.jobs import JobSpec, JobStatus, Resources
from agent.core.records import Job
from agent.db.models import jobs
from agent.metrics import REGISTRY
from agent.runtime.docker_runner import DockerRunner
from agent.wiring import System
from bench.harness import (
    STOP,
    Bench,
    CpuMeter,
    CpuUse,
    T,
    abba,
    attempt_latencies,
    checkpoint,
    mean_ms,
    ms,
    p50_p95,
    peak_rss_mib,
    product_container,
    ratios,
    say,
    wait_final,
    wait_for,
)

POLL_SECONDS = 0.05  # the bench's own polling of the queue, not the product's
IDLE_POLL_SECONDS = 0.02  # in-memory check of the agent's running attempts
PHASE_TIMEOUT_SECONDS = 3600.0
NOT_FINAL = frozenset(status.value for status in JobStatus if not status.is_final)

Submit = Callable[[JobSpec], str]


def job_spec() -> JobSpec:
    return JobSpec(command=["true"], resources=Resources(memory="256m", cpus=0.5), max_retries=0)


# --- 1. direct docker-py -------------------------------------------------------------------------

STEPS = ("create", "start", "wait", "logs", "remove")


@dataclass(frozen=True)
class DirectTiming:
    create: float
    start: float
    wait: float
    logs: float
    remove: float
    exit_code: int

    @property
    def total(self) -> float:
        return self.create + self.start + self.wait + self.logs + self.remove


@dataclass(frozen=True)
class DirectResult:
    seconds: float
    timings: list[DirectTiming]
    cpu: CpuUse


class DirectRunner:
    """Containers straight on the engine, no queue and no agent, each exactly as the agent would
    create it for `job_spec()` (`product_container`), under its own `agent_id`."""

    def __init__(self, runner: DockerRunner, settings: Settings) -> None:
        self.runner = runner
        self.settings = settings
        self.failed = threading.Event()  # a worker failed: the others start nothing new

    def create(self, job_id: str) -> str:
        return self.runner.create(product_container(self.settings, job_spec(), job_id))

    def run_one(self, job_id: str) -> DirectTiming | None:
        """create → start → wait → logs → remove; None when the bench is stopping."""
        if self.failed.is_set() or STOP.is_set():
            return None
        t0 = time.perf_counter()
        container_id = self.create(job_id)
        try:
            t1 = time.perf_counter()
            self.runner.start(container_id)
            t2 = time.perf_counter()
            exit_code = self.runner.wait(container_id)
            t3 = time.perf_counter()
            self.runner.client.api.logs(container_id, stdout=True, stderr=True, timestamps=True)
            t4 = time.perf_counter()
        finally:
            self.runner.remove(container_id)
        t5 = time.perf_counter()
        return DirectTiming(t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, exit_code)

    def run_many(self, count: int, concurrency: int) -> DirectResult:
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="direct")
        meter = CpuMeter().__enter__()
        started = time.perf_counter()
        try:
            futures: list[Future[DirectTiming | None]] = [
                pool.submit(self.run_one, f"{self.settings.agent_id}-{i}") for i in range(count)
            ]
            timings = [timing for future in futures if (timing := future.result()) is not None]
        except BaseException:
            self.failed.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        seconds = time.perf_counter() - started
        meter.__exit__()
        checkpoint()
        return DirectResult(seconds, timings, meter.use)

    def create_start_once(self, job_id: str) -> float:
        """Engine create+start of one container (then waited for and removed, untimed)."""
        checkpoint()
        t0 = time.perf_counter()
        container_id = self.create(job_id)
        try:
            self.runner.start(container_id)
            seconds = time.perf_counter() - t0
            self.runner.wait(container_id)
        finally:
            self.runner.remove(container_id)
        return seconds


# --- 2. trainyard --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainyardResult:
    submit_seconds: float
    final_seconds: float  # first submit → every job final (checked once the agent is idle)
    idle_seconds: float  # first submit → every container removed (the agent idle)
    jobs: list[Job]
    cpu: CpuUse


def http_submitter(stack: ExitStack, system: System) -> Submit:
    with warnings.catch_warnings():  # starlette's note that it now prefers httpx2 to httpx
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient  # noqa: PLC0415 - only with --http

    from api.app import create_app  # noqa: PLC0415

    client = stack.enter_context(
        TestClient(create_app(system.settings, system_=system), base_url="http://127.0.0.1")
    )

    def submit(spec: JobSpec) -> str:
        response = client.post("/jobs", json=spec.model_dump(mode="json", exclude_none=True))
        if response.status_code != 201:
            raise RuntimeError(f"POST /jobs answered {response.status_code}: {response.text}")
        return str(response.json()["id"])

    return submit


def service_submitter(system: System) -> Submit:
    return lambda spec: system.service.submit(spec, actor="bench").id


def wait_agent_idle(system: System) -> None:
    agent = system.agent
    assert agent is not None
    wait_for(
        lambda: not agent.running_job_ids(),
        seconds=PHASE_TIMEOUT_SECONDS,
        interval=IDLE_POLL_SECONDS,
        what="the agent still runs attempts",
    )


_UNFINISHED = select(func.count()).select_from(jobs).where(jobs.c.status.in_(sorted(NOT_FINAL)))


def unfinished_count(system: System) -> int:
    """Jobs not final yet: one count on the claim index. (`queue.stats()`, polled every 50
    ms before, scans every job three times: it took a fifth of the process's CPU.)"""
    with system.db.read() as conn:
        return int(conn.scalar(_UNFINISHED) or 0)


def run_trainyard(system: System, submit: Submit, count: int) -> TrainyardResult:
    meter = CpuMeter().__enter__()
    started = time.perf_counter()
    job_ids = []
    for _ in range(count):
        checkpoint()
        job_ids.append(submit(job_spec()))
    submitted = time.perf_counter()
    agent = system.agent
    assert agent is not None
    # The database is asked only once the agent runs nothing (in memory, every 20 ms): a
    # poll of the queue competes for the CPU that the direct run, waiting on futures, keeps.
    wait_for(
        lambda: not agent.running_job_ids() and unfinished_count(system) == 0,
        seconds=PHASE_TIMEOUT_SECONDS,
        interval=IDLE_POLL_SECONDS,
        what="jobs not final",
    )
    final = time.perf_counter()
    wait_agent_idle(system)
    idle = time.perf_counter()
    meter.__exit__()
    jobs = [system.service.get(job_id) for job_id in job_ids]
    return TrainyardResult(submitted - started, final - started, idle - started, jobs, meter.use)


# --- where Trainyard's time goes -----------------------------------------------------------------

# The agent's threads.
AGENT_THREADS = ("agent-loop", "job-", "wait-", "logs-", "metrics-", "prepare-")
RUNTIME_CALLS = ("create", "start", "wait", "inspect", "remove")


def prepared_counts() -> tuple[float, float]:
    """The agent's containers created ahead so far: (used, discarded)."""

    def count(result: str) -> float:
        sample = REGISTRY.get_sample_value(
            "trainyard_prepared_containers_total", {"result": result}
        )
        return sample or 0.0

    return count("used"), count("discarded")


class Probe:
    """Measurement only: times the agent's engine calls and every SQL statement, per thread kind.

    The runtime's methods are wrapped on this one instance and SQLAlchemy cursor events are
    listened to; no product code changes. Statements are split into `agent` (its loop and attempt
    threads) and `bench/api` (submits and the bench's own polling, in the main thread).
    """

    def __init__(self, system: System) -> None:
        self._lock = threading.Lock()
        self.calls: dict[str, list[float]] = {}
        self.sql: Counter[str] = Counter()
        self.sql_seconds: Counter[str] = Counter()
        self.prepared = prepared_counts()
        self.edges: list[tuple[float, str]] = []
        runtime = system.runtime
        assert runtime is not None
        for name in RUNTIME_CALLS:
            setattr(runtime, name, self._timed(name, getattr(runtime, name)))
        event.listen(system.db.engine, "before_cursor_execute", self._before)
        event.listen(system.db.engine, "after_cursor_execute", self._after)

    def reset(self) -> None:
        with self._lock:
            self.calls = {name: [] for name in RUNTIME_CALLS}
            self.sql.clear()
            self.sql_seconds.clear()
            self.prepared = prepared_counts()
            self.edges = []

    def _timed(self, name: str, fn: Callable[..., T]) -> Callable[..., T]:
        def timed(*args: Any, **kwargs: Any) -> T:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                t1 = time.perf_counter()
                with self._lock:
                    self.calls.setdefault(name, []).append(t1 - t0)
                    if name in ("wait", "start"):  # a slot's hand-over: exit → next start
                        self.edges.append((t1 if name == "wait" else t0, name))

        return timed

    def handover_ms(self) -> float | None:
        """Mean time from a container's exit (its wait returning) to the next start call: the
        slot's hand-over, each start paired with the earliest exit not yet paired."""
        with self._lock:
            edges = sorted(self.edges)
        exits: list[float] = []
        gaps: list[float] = []
        for at, name in edges:
            if name == "wait":
                exits.append(at)
            elif exits:
                gaps.append(at - exits.pop(0))
        return 1000 * sum(gaps) / len(gaps) if gaps else None

    def _before(self, conn: Any, _cursor: Any, _statement: str, *_args: Any) -> None:
        conn.info.setdefault("bench_t0", []).append(time.perf_counter())

    def _after(self, conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        started = conn.info.get("bench_t0")
        if not started:
            return
        seconds = time.perf_counter() - started.pop()
        thread = threading.current_thread().name
        who = "agent" if thread.startswith(AGENT_THREADS) else "bench/api"
        words = statement.split(None, 1)
        kind = "lock" if "pg_advisory" in statement else (words[0].upper() if words else "?")
        if kind == "BEGIN":
            kind = "lock"  # SQLite's BEGIN IMMEDIATE: waiting for the write lock
        with self._lock:
            self.sql[who] += 1
            self.sql[f"{who} {kind}"] += 1
            self.sql_seconds[who] += seconds
            self.sql_seconds[f"{who} {kind}"] += seconds

    def describe(self, jobs: int) -> None:
        with self._lock:
            calls = {k: list(v) for k, v in self.calls.items()}
            sql, sql_seconds = Counter(self.sql), Counter(self.sql_seconds)
        parts = [f"{k} {mean_ms(v)}" for k, v in calls.items() if v]
        say("  agent's engine calls, mean (ms): " + "  ".join(parts))
        now = prepared_counts()
        used, discarded = now[0] - self.prepared[0], now[1] - self.prepared[1]
        say(f"  containers created ahead (slots busy): {used:.0f} used, {discarded:.0f} discarded")
        handover = self.handover_ms()
        if handover is not None:
            say(f"  slot hand-over, a container's exit → the next start call: {handover:.1f} ms")
        for who in ("agent", "bench/api"):
            if sql[who]:
                lock = sql_seconds[f"{who} lock"]
                say(
                    f"  SQL by {who}: {sql[who] / jobs:.1f} statements/job, "
                    f"{ms(sql_seconds[who] / jobs)} ms/job in the database "
                    f"(of which {ms(lock / jobs)} waiting for the write lock)"
                )


# --- 3. latency ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    claim: list[float]  # submit → claim
    running: list[float]  # submit → running
    claim_to_running: list[float]  # claim → running (create + start + bookkeeping)
    direct_create_start: list[float]


def measure_latency(system: System, submit: Submit, direct: DirectRunner, count: int) -> Latency:
    """Interleaved, one Trainyard job then one direct container, so engine drift hits both."""
    jobs, direct_seconds = [], []
    for i in range(count):
        checkpoint()
        wait_agent_idle(system)
        job_id = submit(job_spec())
        jobs.append(
            wait_final(
                system.service.get, job_id, seconds=PHASE_TIMEOUT_SECONDS, interval=POLL_SECONDS
            )
        )
        wait_agent_idle(system)
        direct_seconds.append(direct.create_start_once(f"{direct.settings.agent_id}-lat-{i}"))
    return Latency(*attempt_latencies(jobs), direct_seconds)


# --- reporting -----------------------------------------------------------------------------------


def slot_gap(wall: float, busy: float, concurrency: int, count: int) -> float:
    """Mean slot-seconds per job not covered by the measured per-job spans."""
    return max(0.0, wall * concurrency - busy) / count if count else 0.0


def describe_direct(result: DirectResult, concurrency: int) -> None:
    timings = result.timings
    failed = sum(1 for t in timings if t.exit_code != 0)
    say(f"  {len(timings)} containers, {failed} non-zero exits; mean per container (ms):")
    say("    " + "  ".join(f"{k} {mean_ms(getattr(t, k) for t in timings)}" for k in STEPS))
    gap = slot_gap(result.seconds, sum(t.total for t in timings), concurrency, len(timings))
    say(f"  slot time outside create..remove: {ms(gap)} ms/job")
    say(f"  {result.cpu.per_job(len(timings))}")


def describe_trainyard(result: TrainyardResult, concurrency: int) -> None:
    say(f"  outcomes: {dict(Counter(job.status.value for job in result.jobs))}")
    failed = [job for job in result.jobs if job.status is not JobStatus.SUCCEEDED]
    for job in failed[:3]:
        say(f"    {job.id} {job.status.value}: {job.reason}")
    attempts = [job.attempts[-1] for job in result.jobs if job.attempts]
    to_running = [(a.started_at - a.claimed_at).total_seconds() for a in attempts if a.started_at]
    to_finished = [
        (a.finished_at - a.started_at).total_seconds()
        for a in attempts
        if a.started_at and a.finished_at
    ]
    held = [(a.finished_at - a.claimed_at).total_seconds() for a in attempts if a.finished_at]
    say(
        f"  mean per attempt (ms): claim→running {mean_ms(to_running)}  "
        f"running→finished {mean_ms(to_finished)}"
    )
    gap = slot_gap(result.idle_seconds, sum(held), concurrency, len(held))
    say(f"  slot time outside claim..finished (remove, claim gap): {ms(gap)} ms/job")
    say(f"  {result.cpu.per_job(len(result.jobs))}")


@dataclass
class Results:
    engine: str
    direct: list[DirectResult] = field(default_factory=list)
    trainyard: list[TrainyardResult] = field(default_factory=list)
    latency: Latency | None = None


def summary(args: argparse.Namespace, results: Results) -> None:
    n, c, rounds = args.jobs, args.concurrency, len(results.direct)
    direct = sum(r.seconds for r in results.direct) / rounds
    tyard = sum(r.idle_seconds for r in results.trainyard) / rounds
    final = sum(r.final_seconds for r in results.trainyard) / rounds
    submit = sum(r.submit_seconds for r in results.trainyard) / rounds
    via = "http" if args.http else "service"
    say()
    engine = results.engine
    say(f"jobs={n} concurrency={c} db={args.db} submit={via} rounds={rounds} engine={engine}")
    say(f"direct docker-py   : {direct:.1f} s  ({n / direct:.2f} jobs/s)")
    say(
        f"trainyard          : {tyard:.1f} s  ({n / tyard:.2f} jobs/s)"
        f"   ratio trainyard/direct = {tyard / direct:.2f}   (all final at {final:.1f} s)"
    )
    if rounds > 1:
        pairs = zip(results.direct, results.trainyard, strict=True)
        per_round = ratios(t.idle_seconds / d.seconds for d, t in pairs)
        say(f"  (mean of {rounds} rounds; ratio per round: {per_round})")
    say(f"submit phase       : {submit:.2f} s  ({n / submit:.0f} submits/s)")
    for name, phases in (("direct", results.direct), ("trainyard", results.trainyard)):
        own = sum(r.cpu.own for r in phases) / rounds / n
        engine = sum(r.cpu.engine for r in phases) / rounds / n
        busy = sum(r.cpu.host_busy for r in phases) / rounds
        say(
            f"CPU per job {name:<9}: this process {ms(own)} ms, dockerd+containerd "
            f"{ms(engine)} ms; host {100 * busy:.0f}% busy"
        )
    lat = results.latency
    if lat is not None:
        say(
            f"latency (ms, n={len(lat.claim)}) : "
            f"submit→claim {p50_p95(lat.claim)} | submit→running {p50_p95(lat.running)}"
            f" | claim→running {p50_p95(lat.claim_to_running)}"
            f" | direct create+start {p50_p95(lat.direct_create_start)}"
        )
    say(f"peak RSS           : {peak_rss_mib():.0f} MiB")


# --- the run -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description="Trainyard's throughput and latency against direct docker-py.",
    )
    parser.add_argument("--jobs", type=int, default=100, help="jobs per throughput run")
    parser.add_argument("--concurrency", type=int, default=2, help="containers at a time")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--http", action="store_true", help="submit through POST /jobs")
    parser.add_argument("--latency-jobs", type=int, default=20, help="single jobs for latency")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat both throughput runs, alternating their order (ABBA) against engine drift",
    )
    args = parser.parse_args(argv)
    if min(args.jobs, args.concurrency, args.latency_jobs, args.rounds) < 1:
        parser.error("--jobs, --concurrency, --latency-jobs and --rounds must be at least 1")
    return args


def run(args: argparse.Namespace, bench: Bench) -> int:
    n, c = args.jobs, args.concurrency
    results = Results(engine=bench.facts.get("docker", "?"))
    with ExitStack() as stack:
        database_url = stack.enter_context(bench.database(args.db))
        settings = Settings(
            data_dir=bench.tmp / "data",
            log_dir=bench.tmp / "logs",
            database_url=database_url,
            max_concurrent_jobs=c,
            agent_id=bench.agent_id("agent"),
            max_queued=n + 10,
            stop_grace_seconds=2,
            gpus="none",
        )
        direct_settings = Settings(data_dir=bench.tmp / "direct", agent_id=bench.agent_id("direct"))
        direct = DirectRunner(bench.runner, direct_settings)
        system = System.build(settings, with_agent=True)
        stack.callback(system.close, timeout=30)
        probe = Probe(system)
        system.start()
        submit = http_submitter(stack, system) if args.http else service_submitter(system)
        # Warm-up, not timed: image and engine caches; the service's and agent's first use
        # (statement caches, log and outputs directories). Both sides, so round 1 is fair.
        direct.run_many(c, c)
        run_trainyard(system, submit, c)
        say(f"  peak RSS after set-up and warm-up: {peak_rss_mib():.0f} MiB")

        for round_ in range(args.rounds):
            tag = f"[round {round_ + 1}/{args.rounds}]"
            for phase in abba(round_, "direct", "trainyard"):
                if phase == "direct":
                    say(f"{tag} direct docker-py: {n} containers, {c} at a time")
                    results.direct.append(direct.run_many(n, c))
                    describe_direct(results.direct[-1], c)
                else:
                    say(f"{tag} trainyard ({args.db}): {n} jobs, {c} slots")
                    probe.reset()
                    results.trainyard.append(run_trainyard(system, submit, n))
                    describe_trainyard(results.trainyard[-1], c)
                    probe.describe(n)
                say(f"  peak RSS after {phase}: {peak_rss_mib():.0f} MiB")

        say(f"[latency] {args.latency_jobs} single jobs, agent idle, each with a direct one")
        results.latency = measure_latency(system, submit, direct, args.latency_jobs)
        say(f"  peak RSS after latency: {peak_rss_mib():.0f} MiB")
    summary(args, results)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench("throughput")
    return bench.run(lambda: run(args, bench))


if __name__ == "__main__":
    raise SystemExit(main())
