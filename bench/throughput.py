"""Throughput and latency of Trainyard against direct docker-py, on the same engine.

    python -m bench.throughput [--jobs N] [--concurrency C] [--db sqlite|postgres] [--http]
                               [--latency-jobs L] [--rounds R]

1. direct docker-py: N containers (`true`) created / started / waited / logs read / removed,
   C at a time, with the options Trainyard's runner uses.
2. trainyard: the same N jobs submitted through the real service and run by a real embedded
   agent with C slots, until every job is final and every container removed.
3. latency: with the agent idle, single jobs one after another: submit→claim, submit→running,
   against the engine's own create+start time for a comparable direct container.

Every container the bench creates is labelled and removed, also on Ctrl-C or an error; the end
of the run checks that none is left.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import docker
import docker.errors
import psycopg
import requests.exceptions
from psycopg import sql
from sqlalchemy import event

from agent.config import Settings
from agent.core.jobs import JobSpec, JobStatus, Resources
from agent.core.records import Job
from agent.runtime.base import AGENT_LABEL
from agent.wiring import System

IMAGE = "trainyard/train:latest"
COMMAND = ["true"]
MEMORY = "256m"
MEMORY_BYTES = 256 * 1024 * 1024
CPUS = 0.5
BENCH_LABEL = "trainyard.bench"
RUN_LABEL = "trainyard.bench.run"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
POLL_SECONDS = 0.05  # the bench's own polling of the queue, not the product's
IDLE_POLL_SECONDS = 0.01  # in-memory check of the agent's running attempts
PHASE_TIMEOUT_SECONDS = 3600.0
FINAL = frozenset(status.value for status in JobStatus if status.is_final)

log = logging.getLogger("bench")

Submit = Callable[[JobSpec], str]

# The first Ctrl-C (or SIGTERM) only sets this: the bench stops at its next checkpoint, never in
# the middle of a database or engine call, then cleans up. A second one interrupts at once.
STOP = threading.Event()


class Interrupted(Exception):
    """The bench was asked to stop."""


def checkpoint() -> None:
    if STOP.is_set():
        raise Interrupted


def _on_signal(_signum: int, _frame: FrameType | None) -> None:
    if STOP.is_set():
        raise KeyboardInterrupt
    STOP.set()
    os.write(2, b"stopping at the next checkpoint, then cleaning up (again to force)\n")


def install_signal_handlers() -> None:
    signal.signal(signal.SIGTERM, _on_signal)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # keep `nohup`-style ignoring
        signal.signal(signal.SIGINT, _on_signal)


# --- small helpers -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def p50_p95(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"p50 {ms(statistics.median(values))} p95 {ms(percentile(values, 95))}"


def mean_ms(values: list[float]) -> str:
    return ms(statistics.fmean(values)) if values else "n/a"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def say(text: str = "", end: str = "\n") -> None:
    try:
        print(text, end=end, flush=True)
    except BrokenPipeError:  # the reader left (`| head`): stop printing, still clean up
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def report_rss(phase: str) -> None:
    say(f"  peak RSS after {phase}: {peak_rss_mib():.0f} MiB")


def job_spec() -> JobSpec:
    return JobSpec(
        command=list(COMMAND), resources=Resources(memory=MEMORY, cpus=CPUS), max_retries=0
    )


# --- containers the bench owns -------------------------------------------------------------------

ENGINE_RETRY_SECONDS = 60.0  # cleanup outlasts an engine restart (other people's tests do that)
T = TypeVar("T")


def engine_retry(fn: Callable[[], T], *, seconds: float = ENGINE_RETRY_SECONDS) -> T:
    """Call `fn`, retrying while the engine is unreachable, for cleanup that must happen."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
            if isinstance(exc, docker.errors.APIError) or time.monotonic() > deadline:
                raise
            log.warning("engine unreachable (%s); retrying", exc)
            time.sleep(1.0)


class ContainerTracker:
    """Ids of direct containers not yet removed; whatever is left is force-removed at the end."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def add(self, container_id: str) -> None:
        with self._lock:
            self._ids.add(container_id)

    def remove(self, container_id: str) -> None:
        """Force-remove; on failure the id stays tracked for `remove_all`."""
        with suppress(docker.errors.NotFound):
            self.client.api.remove_container(container_id, force=True, v=True)
        with self._lock:
            self._ids.discard(container_id)

    def remove_all(self) -> int:
        with self._lock:
            left = list(self._ids)
        for container_id in left:
            engine_retry(partial(self.remove, container_id))
        return len(left)


def labelled(client: docker.DockerClient, *labels: str) -> list[str]:
    """Ids of every container (any state) carrying all these `key=value` labels."""
    found = engine_retry(lambda: client.api.containers(all=True, filters={"label": list(labels)}))
    return [str(item["Id"]) for item in found]


def force_remove(client: docker.DockerClient, container_id: str) -> None:
    with suppress(docker.errors.NotFound):
        engine_retry(lambda: client.api.remove_container(container_id, force=True, v=True))


def sweep(client: docker.DockerClient, *labels: str) -> int:
    """Force-remove every container with these labels; how many there were."""
    ids = labelled(client, *labels)
    for container_id in ids:
        force_remove(client, container_id)
    return len(ids)


def outputs_dir(root: Path, name: str, user: str) -> Path:
    """A writable per-container output directory, the way the agent prepares one."""
    path = (root / name).resolve()
    path.mkdir(parents=True, exist_ok=True)
    uid, _, gid = user.partition(":")
    if os.geteuid() == 0 and uid.isdigit():
        os.chown(path, int(uid), int(gid) if gid.isdigit() else int(uid))
    else:
        path.chmod(0o777)
    return path


# --- 1. direct docker-py -------------------------------------------------------------------------


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


class DirectRunner:
    """Runs containers straight through docker-py with the options Trainyard's runner uses."""

    def __init__(
        self,
        client: docker.DockerClient,
        tracker: ContainerTracker,
        settings: Settings,
        *,
        run_id: str,
        outputs_root: Path,
    ) -> None:
        self.client = client
        self.tracker = tracker
        self.settings = settings
        self.run_id = run_id
        self.outputs_root = outputs_root
        self.failed = threading.Event()  # a worker failed: the others start nothing new

    def create(self, name: str) -> str:
        outputs = outputs_dir(self.outputs_root, name, self.settings.container_user)
        container = self.client.containers.create(
            IMAGE,
            command=list(COMMAND),
            name=name,
            environment={
                "TRAINYARD_JOB_ID": name,
                "TRAINYARD_ATTEMPT": "1",
                "TRAINYARD_RESUME": "0",
                "TRAINYARD_PARAMS": "{}",
                "TRAINYARD_OUTPUT_DIR": "/outputs",
            },
            labels={BENCH_LABEL: "1", RUN_LABEL: self.run_id},
            mem_limit=MEMORY_BYTES,
            memswap_limit=MEMORY_BYTES,
            nano_cpus=int(CPUS * 1e9),
            pids_limit=self.settings.pids_limit,
            user=self.settings.container_user,
            network_mode="none",
            security_opt=["no-new-privileges"],
            cap_drop=["ALL"],
            volumes={str(outputs): {"bind": "/outputs", "mode": "rw"}},
            detach=True,
            auto_remove=False,
        )
        container_id = str(container.id)
        self.tracker.add(container_id)
        return container_id

    def run_one(self, name: str) -> DirectTiming | None:
        """create → start → wait → logs → remove; None when the bench is stopping."""
        if self.failed.is_set() or STOP.is_set():
            return None
        api = self.client.api
        t0 = time.perf_counter()
        container_id = self.create(name)
        try:
            t1 = time.perf_counter()
            api.start(container_id)
            t2 = time.perf_counter()
            exit_code = int(api.wait(container_id, timeout=None).get("StatusCode", -1))
            t3 = time.perf_counter()
            api.logs(container_id, stdout=True, stderr=True, timestamps=True)
            t4 = time.perf_counter()
        finally:
            self.tracker.remove(container_id)
        t5 = time.perf_counter()
        return DirectTiming(t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, exit_code)

    def run_many(self, count: int, concurrency: int) -> DirectResult:
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="direct")
        started = time.perf_counter()
        try:
            futures: list[Future[DirectTiming | None]] = [
                pool.submit(self.run_one, f"trainyard-bench-{self.run_id}-{i}")
                for i in range(count)
            ]
            timings = [timing for future in futures if (timing := future.result()) is not None]
        except BaseException:
            self.failed.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        checkpoint()
        return DirectResult(time.perf_counter() - started, timings)

    def create_start_once(self, name: str) -> float:
        """Engine create+start of one container (then waited for and removed, untimed)."""
        checkpoint()
        t0 = time.perf_counter()
        container_id = self.create(name)
        try:
            self.client.api.start(container_id)
            seconds = time.perf_counter() - t0
            self.client.api.wait(container_id, timeout=None)
        finally:
            self.tracker.remove(container_id)
        return seconds


# --- 2. trainyard --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainyardResult:
    submit_seconds: float
    final_seconds: float  # first submit → every job final
    idle_seconds: float  # first submit → every container removed (the agent idle)
    jobs: list[Job]

    def outcomes(self) -> Counter[str]:
        return Counter(job.status.value for job in self.jobs)


@contextmanager
def postgres_database(name: str) -> Iterator[str]:
    """A fresh, empty database for this run; dropped afterwards."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield PG_URL.format(database=name)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def http_submitter(stack: ExitStack, settings: Settings, system: System) -> Submit:
    with warnings.catch_warnings():  # starlette's note that it now prefers httpx2 to httpx
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient  # noqa: PLC0415 - only with --http

    from api.app import create_app  # noqa: PLC0415

    client = stack.enter_context(TestClient(create_app(settings, system_=system)))

    def submit(spec: JobSpec) -> str:
        response = client.post("/jobs", json=spec.model_dump(mode="json", exclude_none=True))
        if response.status_code != 201:
            raise RuntimeError(f"POST /jobs answered {response.status_code}: {response.text}")
        return str(response.json()["id"])

    return submit


def service_submitter(system: System) -> Submit:
    def submit(spec: JobSpec) -> str:
        return system.service.submit(spec, actor="bench").id

    return submit


def wait_agent_idle(system: System, deadline: float) -> None:
    assert system.agent is not None
    while system.agent.running_job_ids():
        checkpoint()
        if time.perf_counter() > deadline:
            raise TimeoutError("the agent still runs attempts")
        time.sleep(IDLE_POLL_SECONDS)


def final_count(system: System) -> int:
    counts = system.queue.stats().counts
    return sum(count for status, count in counts.items() if status in FINAL)


def run_trainyard(system: System, submit: Submit, count: int) -> TrainyardResult:
    already_final = final_count(system)
    started = time.perf_counter()
    deadline = started + PHASE_TIMEOUT_SECONDS
    job_ids = []
    for _ in range(count):
        checkpoint()
        job_ids.append(submit(job_spec()))
    submitted = time.perf_counter()
    while final_count(system) < already_final + count:
        checkpoint()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"jobs not final after {PHASE_TIMEOUT_SECONDS:.0f}s")
        time.sleep(POLL_SECONDS)
    final = time.perf_counter()
    wait_agent_idle(system, deadline)
    idle = time.perf_counter()
    jobs = [system.service.get(job_id) for job_id in job_ids]
    return TrainyardResult(submitted - started, final - started, idle - started, jobs)


# --- where Trainyard's time goes -----------------------------------------------------------------

AGENT_THREADS = ("agent-loop", "job-")  # the agent's loop and its per-attempt threads
RUNTIME_CALLS = ("create", "start", "wait", "inspect", "remove")


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

    def _timed(self, name: str, fn: Callable[..., T]) -> Callable[..., T]:
        def timed(*args: Any, **kwargs: Any) -> T:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.calls.setdefault(name, []).append(time.perf_counter() - t0)

        return timed

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


def wait_final(system: System, job_id: str, deadline: float) -> Job:
    while not (job := system.service.get(job_id)).status.is_final:
        checkpoint()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"job {job_id} not final")
        time.sleep(POLL_SECONDS)
    return job


def measure_latency(system: System, submit: Submit, direct: DirectRunner, count: int) -> Latency:
    """Interleaved, one Trainyard job then one direct container, so engine drift hits both."""
    deadline = time.perf_counter() + PHASE_TIMEOUT_SECONDS
    jobs, direct_seconds = [], []
    for i in range(count):
        checkpoint()
        wait_agent_idle(system, deadline)
        jobs.append(wait_final(system, submit(job_spec()), deadline))
        wait_agent_idle(system, deadline)
        direct_seconds.append(direct.create_start_once(f"trainyard-bench-{direct.run_id}-lat-{i}"))
    claim, running, claim_to_running = [], [], []
    for job in jobs:
        attempt = job.attempts[0]
        claim.append((attempt.claimed_at - job.created_at).total_seconds())
        if attempt.started_at is not None:
            running.append((attempt.started_at - job.created_at).total_seconds())
            claim_to_running.append((attempt.started_at - attempt.claimed_at).total_seconds())
    return Latency(claim, running, claim_to_running, direct_seconds)


# --- reporting -----------------------------------------------------------------------------------


def describe_direct(result: DirectResult, concurrency: int) -> None:
    timings = result.timings
    n = len(timings)
    failed = sum(1 for t in timings if t.exit_code != 0)
    say(f"  {n} containers, {failed} non-zero exits; mean per container (ms):")
    parts = {
        "create": statistics.fmean(t.create for t in timings),
        "start": statistics.fmean(t.start for t in timings),
        "wait": statistics.fmean(t.wait for t in timings),
        "logs": statistics.fmean(t.logs for t in timings),
        "remove": statistics.fmean(t.remove for t in timings),
    }
    say("    " + "  ".join(f"{k} {ms(v)}" for k, v in parts.items()))
    gap = slot_gap(result.seconds, sum(t.total for t in timings), concurrency, n)
    say(f"  slot time outside create..remove: {ms(gap)} ms/job")


def slot_gap(wall: float, busy: float, concurrency: int, count: int) -> float:
    """Mean slot-seconds per job not covered by the measured per-job spans."""
    return max(0.0, wall * concurrency - busy) / count if count else 0.0


def describe_trainyard(result: TrainyardResult, concurrency: int) -> None:
    outcomes = result.outcomes()
    say(f"  outcomes: {dict(outcomes)}")
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
    say(f"jobs={n} concurrency={c} db={args.db} submit={via} rounds={rounds}", end=" ")
    say(f"engine={results.engine}")
    say(f"direct docker-py   : {direct:.1f} s  ({n / direct:.2f} jobs/s)")
    say(
        f"trainyard          : {tyard:.1f} s  ({n / tyard:.2f} jobs/s)"
        f"   ratio trainyard/direct = {tyard / direct:.2f}   (all final at {final:.1f} s)"
    )
    if rounds > 1:
        per_round = [
            t.idle_seconds / d.seconds
            for d, t in zip(results.direct, results.trainyard, strict=True)
        ]
        ratios = ", ".join(f"{r:.2f}" for r in per_round)
        say(f"  (mean of {rounds} rounds; ratio per round: {ratios})")
    say(f"submit phase       : {submit:.2f} s  ({n / submit:.0f} submits/s)")
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


def run(args: argparse.Namespace, client: docker.DockerClient, tmp: Path, run_id: str) -> None:
    agent_id = f"bench-{run_id}"
    tracker = ContainerTracker(client)
    results = Results(engine=str(client.version().get("Version", "unknown")))
    n, c = args.jobs, args.concurrency
    try:
        with ExitStack() as stack:
            database_url = ""
            if args.db == "postgres":
                name = f"trainyard_bench_{os.getpid()}"
                database_url = stack.enter_context(postgres_database(name))
            settings = Settings(
                data_dir=tmp / "data",
                log_dir=tmp / "logs",
                database_url=database_url,
                max_concurrent_jobs=c,
                agent_id=agent_id,
                max_queued=n + 10,
                stop_grace_seconds=2,
                gpus="none",
            )
            direct = DirectRunner(
                client, tracker, settings, run_id=run_id, outputs_root=tmp / "direct-outputs"
            )
            say(f"engine {results.engine}; run {run_id}; tmp {tmp}")
            system = System.build(settings, with_agent=True)
            stack.callback(sweep_agent, client, agent_id)  # runs after system.close below
            stack.callback(system.close, timeout=30)
            probe = Probe(system)
            system.start()
            submit = (
                http_submitter(stack, settings, system) if args.http else service_submitter(system)
            )
            direct.run_many(1, 1)  # warm-up: image and engine caches, not timed
            report_rss("set-up and warm-up")

            for round_ in range(args.rounds):
                phases = ["direct", "trainyard"] if round_ % 2 == 0 else ["trainyard", "direct"]
                for phase in phases:
                    tag = f"[round {round_ + 1}/{args.rounds}]"
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
                    report_rss(phase)

            say(f"[latency] {args.latency_jobs} single jobs, agent idle, each with a direct one")
            results.latency = measure_latency(system, submit, direct, args.latency_jobs)
            report_rss("latency")
    finally:
        left = tracker.remove_all()
        if left:
            say(f"cleanup: force-removed {left} direct container(s) still running")
    summary(args, results)


def sweep_agent(client: docker.DockerClient, agent_id: str) -> None:
    """After the agent stopped, nothing labelled with its id should be left: remove and say so."""
    left = sweep(client, f"{AGENT_LABEL}={agent_id}")
    if left:
        say(f"cleanup: force-removed {left} container(s) the agent left behind")


def verify_no_leaks(client: docker.DockerClient, run_id: str) -> int:
    agent = labelled(client, f"{AGENT_LABEL}=bench-{run_id}")
    bench = labelled(client, f"{BENCH_LABEL}=1", f"{RUN_LABEL}={run_id}")
    for container_id in agent + bench:
        force_remove(client, container_id)
    say(
        f"leak check: {len(agent)} container(s) with {AGENT_LABEL}=bench-{run_id}, "
        f"{len(bench)} with {BENCH_LABEL}=1,{RUN_LABEL}={run_id}"
    )
    for container_id in agent + bench:
        say(f"  LEAK {container_id[:12]} (removed)")
    return len(agent) + len(bench)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    install_signal_handlers()
    run_id = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="trainyard-bench-", dir="/tmp"))
    client = docker.from_env(version="auto")
    status = 0
    try:
        run(args, client, tmp, run_id)
    except (Interrupted, KeyboardInterrupt):
        say("interrupted")
        status = 130
    finally:
        try:
            if verify_no_leaks(client, run_id):
                status = status or 1
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            say(f"leak check failed: {exc}")
            status = status or 1
        finally:
            client.close()
            shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
