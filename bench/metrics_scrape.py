"""What a Prometheus scrape of GET /metrics costs, against rendering prometheus_client's own
default registry in the same run.

    python -m bench.metrics_scrape [--jobs 1000,10000] [--db sqlite|postgres|both]
                                   [--rounds 5] [--reps 100]

No Docker. For each database and job count, a fresh database gets that many jobs through
`JobQueue.submit` (the product's path), then a realistic spread of states set directly (70 %
succeeded, 15 % failed by several outcomes, 5 % cancelled, 8 running held by 4 agents with
GPUs, the rest queued), and this process's own metrics are given children like a busy agent's
(every outcome, 8 progress gauges). Then, in rounds whose order rotates (drift hits every
candidate alike), `--reps` calls each of:

  baseline   generate_latest(prometheus_client.REGISTRY): the default registry (process,
             platform and GC collectors), what any Python exporter renders
  local      generate_latest(agent.metrics.REGISTRY): this process's counters, no database
  db read    GaugeReader.read(): the database gauges' statements alone
  exposition TrainyardService.metrics_exposition(): what the /metrics route renders
  GET        GET /metrics over real HTTP from the real app under uvicorn on 127.0.0.1
             (keep-alive), i.e. what Prometheus pays

Figures: median and p95 per call, and each median as a ratio of the baseline's. The output
size and sample count say what is being rendered. Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import prometheus_client
import uvicorn
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from agent.config import Settings
from agent.core.jobs import Outcome
from agent.core.records import NewJob
from agent.core.scheduling import Capacity
from agent.db.engine import Database
from agent.db.gauges import GaugeReader
from agent.db.migrate import upgrade
from agent.db.queue import JobQueue
from agent.metrics import (
    ATTEMPTS_FINISHED,
    JOB_PROGRESS,
    JOBS_REJECTED,
    REGISTRY,
    RETRIES,
)
from agent.wiring import System
from api.app import create_app
from bench.harness import Bench, checkpoint, percentile, say, wait_for

AGENTS = 4
HELD_PER_AGENT = 2
GIB = 2**30


JOB = NewJob(
    name="bench-metrics",
    image="trainyard/train:latest",
    command=None,
    params={},
    env={},
    memory_bytes=256 * 2**20,
    cpus=0.5,
    gpus=1,
    timeout_seconds=None,
    max_retries=0,
    priority=0,
)


@dataclass
class Candidate:
    name: str
    call: Callable[[], object]
    times: list[float]


def fill(url: str, jobs: int) -> None:
    """`jobs` jobs in a realistic spread of states, 8 of them held by 4 GPU agents."""
    upgrade(url)
    queue = JobQueue(Database(url))
    for _ in range(jobs):
        queue.submit(JOB, max_queued=jobs + 1)
    for n in range(AGENTS):
        capacity = Capacity(slots=4, memory_bytes=64 * GIB, cpus=16.0, gpu_ids=("0", "1", "2", "3"))
        agent_id = f"bench-metrics-agent-{n}"
        queue.register_agent(agent_id, "host", capacity)
        for _ in range(HELD_PER_AGENT):
            claim = queue.claim(agent_id, capacity, lease_seconds=600)
            assert claim is not None
            queue.mark_running(claim)
    spread = [
        ("succeeded", "succeeded", 0.70),
        ("failed", "user_error", 0.08),
        ("failed", "oom", 0.04),
        ("failed", "infra_error", 0.03),
        ("cancelled", "cancelled", 0.05),
    ]
    with queue.db.transaction() as s:
        queued = list(s.scalars(text("SELECT id FROM jobs WHERE status = 'queued' ORDER BY id")))
        start = 0
        for status, outcome, share in spread:
            ids = queued[start : start + int(share * jobs)]
            start += len(ids)
            s.execute(
                text("UPDATE jobs SET status = :s, outcome = :o WHERE id = :id"),
                [{"s": status, "o": outcome, "id": i} for i in ids],
            )
    queue.db.dispose()


def busy_process_metrics() -> None:
    """Children like a busy agent's: every outcome counted, 8 running jobs' progress."""
    for outcome in Outcome:
        ATTEMPTS_FINISHED.labels(outcome.value).inc()
        RETRIES.labels(outcome.value).inc()
    JOBS_REJECTED.labels("QueueFull").inc()
    for n in range(AGENTS * HELD_PER_AGENT):
        JOB_PROGRESS.labels(f"{n:032x}").set(n / 10)


class Served:
    """The real app for `system` under uvicorn on 127.0.0.1 (a thread of this process)."""

    def __init__(self, system: System) -> None:
        with socket.socket() as sock:  # a free port on loopback
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            create_app(system.settings, system_=system),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> httpx.Client:
        self.thread.start()
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}")
        wait_for(self._up, seconds=30, interval=0.05, what="the API did not come up")
        return self.client

    def _up(self) -> bool:
        try:
            return self.client.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    def __exit__(self, *_: object) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)


def measure(candidates: list[Candidate], rounds: int, reps: int) -> None:
    for round_ in range(rounds):
        order = candidates[round_ % len(candidates) :] + candidates[: round_ % len(candidates)]
        for candidate in order:
            checkpoint()
            candidate.call()  # warm
            for _ in range(reps):
                started = time.perf_counter()
                candidate.call()
                candidate.times.append(time.perf_counter() - started)


def report(db: str, jobs: int, candidates: list[Candidate], sizes: dict[str, str]) -> None:
    base = statistics.median(candidates[0].times)
    say(f"\n{db}, {jobs} jobs: median / p95 per call, median ÷ baseline median")
    for c in candidates:
        median = statistics.median(c.times)
        p95 = percentile(c.times, 95)
        size = sizes.get(c.name, "")
        say(
            f"  {c.name:<11} {median * 1e6:9.0f} µs  {p95 * 1e6:9.0f} µs   "
            f"x{median / base:6.2f}   {size}"
        )


def shape(text_: str) -> str:
    families = list(text_string_to_metric_families(text_))
    samples = sum(len(f.samples) for f in families)
    return f"{len(text_):,} bytes, {len(families)} families, {samples} samples"


def run_one(bench: Bench, db: str, jobs: int, args: argparse.Namespace) -> None:
    with bench.database(db) as url:
        say(f"\nfilling {db} with {jobs} jobs …")
        fill(url, jobs)
        settings = Settings(
            database_url=url,
            data_dir=bench.tmp / "data",
            log_dir=bench.tmp / "logs",
            agent_id=bench.agent_id("api"),
            gpus="none",
        )
        system = System.build(settings, with_agent=False, migrate=False)
        try:
            with Served(system) as client:
                reader = GaugeReader(system.db)
                candidates = [
                    Candidate("baseline", lambda: generate_latest(prometheus_client.REGISTRY), []),
                    Candidate("local", lambda: generate_latest(REGISTRY), []),
                    Candidate("db read", reader.read, []),
                    Candidate("exposition", system.service.metrics_exposition, []),
                    Candidate("GET", lambda: client.get("/metrics").raise_for_status(), []),
                ]
                sizes = {
                    "baseline": shape(generate_latest(prometheus_client.REGISTRY).decode()),
                    "local": shape(generate_latest(REGISTRY).decode()),
                    "exposition": shape(system.service.metrics_exposition().decode()),
                    "GET": shape(client.get("/metrics").text),
                }
                read = reader.read()
                sizes["db read"] = (
                    f"{sum(read.jobs.values())} jobs in {len(read.jobs)} (status, outcome) "
                    f"groups, {len(read.agents)} agents"
                )
                measure(candidates, args.rounds, args.reps)
                report(db, jobs, candidates, sizes)
        finally:
            system.close()
            if url.startswith("sqlite:///"):  # the harness names it per run, not per size
                for suffix in ("", "-wal", "-shm"):
                    Path(url.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.metrics_scrape",
        description="A scrape of /metrics against prometheus_client's default registry.",
    )
    parser.add_argument("--jobs", default="1000", help="job counts, comma-separated (1000)")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, order rotating (5)")
    parser.add_argument("--reps", type=int, default=100, help="calls per candidate per round")
    args = parser.parse_args(argv)
    args.dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    try:
        args.job_counts = [int(n) for n in args.jobs.split(",")]
    except ValueError:
        parser.error(f"--jobs must be whole numbers separated by commas, not {args.jobs!r}")
    if any(n < 2 * AGENTS * HELD_PER_AGENT for n in args.job_counts):
        parser.error(f"--jobs: at least {2 * AGENTS * HELD_PER_AGENT} jobs")
    if args.rounds < 1 or args.reps < 1:
        parser.error("--rounds and --reps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench("metrics", engine=False)

    def body() -> int:
        busy_process_metrics()
        for db in args.dbs:
            for jobs in args.job_counts:
                run_one(bench, db, jobs, args)
        return 0

    return bench.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
