"""What every bench script shares: one run's life cycle, stopping, formatting, databases, and the
product's own container spec for any container a bench starts itself.

`Bench(name).run(body)` gives a run an id, a scratch directory under /tmp and an engine
connection, prints the host, installs the signal handlers and, whatever happened, removes and
reports every container labelled `trainyard.agent=bench-<name>-<run>-*` and deletes the directory.
Every container of a run carries that label: the agents' (their `agent_id` is `bench.agent_id(..)`)
and the bench's own, which come from `product_container`, the agent's `container_spec`.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TypeVar

import docker.errors
import psycopg
import requests.exceptions
from psycopg import sql

from agent.config import Settings
from agent.core.admission import resolve
from agent.core.errors import RuntimeUnavailable, TrainyardError
from agent.core.jobs import JobSpec, JobStatus
from agent.core.records import Claim, Job
from agent.runtime.base import AGENT_LABEL, ContainerSpec
from agent.runtime.docker_runner import DockerRunner
from agent.worker.container_spec import container_spec, outputs_path
from agent.worker.execution import ensure_outputs_dir

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
ENGINE_RETRY_SECONDS = 60.0  # clean-up outlasts an engine restart (other people's tests do that)
MIB = 1024 * 1024
TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")
log = logging.getLogger("bench")

# --- stopping ------------------------------------------------------------------------------------

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


def wait_for(ready: Callable[[], T | None], *, seconds: float, interval: float, what: str) -> T:
    """Poll `ready` until it returns something truthy; checkpoints, and TimeoutError."""
    deadline = time.monotonic() + seconds
    while not (result := ready()):
        checkpoint()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {seconds:.0f} s")
        time.sleep(interval)
    return result


def wait_final(get: Callable[[str], Job], job_id: str, *, seconds: float, interval: float) -> Job:
    def final() -> Job | None:
        job = get(job_id)
        return job if job.status.is_final else None

    return wait_for(final, seconds=seconds, interval=interval, what=f"job {job_id} not final")


def abba(round_: int, a: T, b: T) -> tuple[T, T]:
    """A then B in even rounds, B then A in odd ones: engine drift hits both sides alike."""
    return (a, b) if round_ % 2 == 0 else (b, a)


# --- figures -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def p50_p95(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"p50 {ms(statistics.median(values))} p95 {ms(percentile(values, 95))}"


def mean_ms(values: Iterable[float]) -> str:
    values = list(values)
    return ms(statistics.fmean(values)) if values else "n/a"


def ratios(values: Iterable[float]) -> str:
    return ", ".join(f"{r:.2f}" for r in values)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def say(text: str = "") -> None:
    try:
        print(text, flush=True)
    except BrokenPipeError:  # the reader left (`| head`): stop printing, still clean up
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def attempt_latencies(jobs: Iterable[Job]) -> tuple[list[float], list[float], list[float]]:
    """submit→claim, submit→running and claim→running of each job's first attempt, in seconds."""
    claim, running, claim_to_running = [], [], []
    for job in jobs:
        if not job.attempts:
            continue
        attempt = job.attempts[0]
        claim.append((attempt.claimed_at - job.created_at).total_seconds())
        if attempt.started_at is not None:
            running.append((attempt.started_at - job.created_at).total_seconds())
            claim_to_running.append((attempt.started_at - attempt.claimed_at).total_seconds())
    return claim, running, claim_to_running


def host_facts(runner: DockerRunner | None) -> dict[str, str]:
    facts = {
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "load": "/".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    shows = {"postgresql": "server_version", "pg synchronous_commit": "synchronous_commit"}
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            for key, setting in shows.items():
                row = conn.execute(f"SHOW {setting}").fetchone()
                facts[key] = str(row[0]) if row else "?"
    except psycopg.Error:
        facts["postgresql"] = "unreachable"
    if runner is not None:
        version = runner.client.version()
        facts["docker"] = f"{version.get('Version')} (API {version.get('ApiVersion')})"
    return facts


# --- databases -----------------------------------------------------------------------------------


@contextmanager
def postgres_database(name: str) -> Iterator[str]:
    """A fresh, empty database; dropped afterwards."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield PG_URL.format(database=name)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# --- containers ----------------------------------------------------------------------------------


def product_container(settings: Settings, spec: JobSpec, job_id: str) -> ContainerSpec:
    """The container the agent creates for attempt 1 of this job (`resolve`, `container_spec`),
    with its output directory made as the agent makes it; labelled with `settings.agent_id`."""
    new = resolve(spec, settings)
    now = datetime.now(UTC)
    job = Job(
        id=job_id,
        **{f.name: getattr(new, f.name) for f in fields(new)},
        status=JobStatus.STARTING,
        reason=None,
        outcome=None,
        exit_code=None,
        attempt_count=1,
        retries_used=0,
        infra_retries_used=0,
        not_before=None,
        created_at=now,
        updated_at=now,
        started_at=None,
        finished_at=None,
        agent_id=settings.agent_id,
        cancel_requested_at=None,
        cancel_requested_by=None,
    )
    ensure_outputs_dir(outputs_path(settings, job_id), settings.container_user)
    return container_spec(Claim(job, 1, "bench", (), settings.agent_id), settings)


def engine_retry(fn: Callable[[], T], *, seconds: float = ENGINE_RETRY_SECONDS) -> T:
    """Call `fn`, retrying while the engine is unreachable, for clean-up that must happen."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except (
            RuntimeUnavailable,
            requests.exceptions.ConnectionError,
            docker.errors.DockerException,
        ) as exc:
            if isinstance(exc, docker.errors.APIError) or time.monotonic() > deadline:
                raise
            log.warning("engine unreachable (%s); retrying", exc)
            time.sleep(1.0)


def remove_containers(runner: DockerRunner, prefix: str) -> list[tuple[str, str]]:
    """Force-remove every container, any state, labelled `trainyard.agent=<prefix>-*`;
    (id, agent) of each."""
    found = engine_retry(
        lambda: runner.client.api.containers(all=True, filters={"label": AGENT_LABEL})
    )
    labels = {str(c["Id"]): str((c.get("Labels") or {}).get(AGENT_LABEL, "")) for c in found}
    mine = [(cid, agent) for cid, agent in labels.items() if agent.startswith(f"{prefix}-")]
    for container_id, _ in mine:
        engine_retry(partial(runner.remove, container_id))
    return mine


def leak_check(runner: DockerRunner, prefix: str) -> int:
    """Nothing labelled for this run may be left: remove it, say so, and how many there were."""
    leaked = remove_containers(runner, prefix)
    say(f"leak check: {len(leaked)} container(s) labelled {AGENT_LABEL}={prefix}-*")
    for container_id, agent in leaked:
        say(f"  LEAK {container_id[:12]} of {agent} (removed)")
    return len(leaked)


# --- one run -------------------------------------------------------------------------------------


class Bench:
    """One run of a bench script; see the module's docstring."""

    def __init__(self, name: str, *, engine: bool = True) -> None:
        self.name = name
        self.run_id = uuid.uuid4().hex[:8]
        self.prefix = f"bench-{name}-{self.run_id}"
        self.engine = engine
        self.tmp = Path()
        self.runner = DockerRunner()
        self.facts: dict[str, str] = {}

    def agent_id(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    @contextmanager
    def database(self, kind: str) -> Iterator[str]:
        """A fresh SQLite file in the scratch directory, or PostgreSQL database, for this run."""
        name = f"trainyard_bench_{self.name}_{os.getpid()}"
        if kind == "sqlite":
            yield f"sqlite:///{self.tmp / name}.db"
        else:
            with postgres_database(name) as url:
                yield url

    def run(self, body: Callable[[], int]) -> int:
        """Run `body`; 130 when interrupted, at least 1 when a container was left behind."""
        logging.basicConfig(
            level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        install_signal_handlers()
        started = time.monotonic()
        status = 0
        self.tmp = Path(tempfile.mkdtemp(prefix=f"trainyard-bench-{self.name}-", dir="/tmp"))
        try:
            self.facts = host_facts(self.runner if self.engine else None)
            facts = ", ".join(f"{k} {v}" for k, v in self.facts.items())
            say(f"bench.{self.name}: {facts}; run {self.run_id}; tmp {self.tmp}")
            status = body()
        except (Interrupted, KeyboardInterrupt):
            say("interrupted")
            status = 130
        finally:
            try:
                if self.engine and leak_check(self.runner, self.prefix):
                    status = status or 1
            except (TrainyardError, docker.errors.DockerException) as exc:
                say(f"leak check failed: {exc}")
                status = status or 1
            finally:
                self.runner.close()
                shutil.rmtree(self.tmp, ignore_errors=True)
        say(f"wall time {time.monotonic() - started:.0f} s; exit status {status}")
        return status


def dockerd_cpu() -> tuple[int, float]:
    """(pid, CPU seconds so far) of the live dockerd, or (0, NaN)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "dockerd":
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if fields[0] != "Z":  # a restarted engine leaves a zombie behind
                    return int(entry.name), (int(fields[11]) + int(fields[12])) / TICKS
        except OSError:
            continue
    return 0, float("nan")


def dockerd_since(start: tuple[int, float]) -> float:
    pid, seconds = dockerd_cpu()
    return seconds - start[1] if pid == start[0] else float("nan")


def _engine_processes_cpu() -> float:
    """CPU seconds so far of dockerd and containerd together (NaN if unreadable)."""
    total, found = 0.0, False
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() in (
                "dockerd",
                "containerd",
            ):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / TICKS
                found = True
        except OSError:
            continue
    return total if found else float("nan")


def _host_ticks() -> tuple[int, int]:
    """(busy, all) jiffies of every core since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


@dataclass(frozen=True)
class CpuUse:
    """CPU spent during a phase: this process (all its threads), the engine's daemons
    (dockerd + containerd; runc and the shims come and go with each container and are not in
    it), and how busy the whole host was."""

    own: float
    engine: float
    host_busy: float  # 0..1 of all cores

    def per_job(self, jobs: int) -> str:
        return (
            f"CPU per job (ms): this process {ms(self.own / jobs)}, dockerd+containerd "
            f"{ms(self.engine / jobs)}; host {100 * self.host_busy:.0f}% busy"
        )


class CpuMeter:
    """`with CpuMeter() as meter: ...`, then `meter.use`."""

    use: CpuUse

    def __enter__(self) -> CpuMeter:
        self._own, self._engine, self._host = (
            time.process_time(),
            _engine_processes_cpu(),
            _host_ticks(),
        )
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total = _host_ticks()
        spent = total - self._host[1]
        self.use = CpuUse(
            time.process_time() - self._own,
            _engine_processes_cpu() - self._engine,
            (busy - self._host[0]) / spent if spent else float("nan"),
        )
