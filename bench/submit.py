"""Throughput and latency of `POST /jobs` over HTTP, on a real API-only service process.

    python -m bench.submit [--db sqlite|postgres|both] [--clients 1,16] [--preload 0,100000]
                           [--seconds 10 | --requests N] [--warmup 1] [--json PATH] [--profile]
                           [--api-workers N] [--token]

For each database and preload: a fresh database (a SQLite file in the scratch directory, or a
temporary PostgreSQL database), migrated, then `--preload` finished jobs bulk-inserted in SQL
(each succeeded, with its released attempt and its four events, as the agent leaves them). A
phantom agent with huge capacity is registered and kept beating from this process, because
the service refuses jobs that no live agent could run. Then `python run.py api` starts (no
agent, TRAINYARD_MAX_QUEUED high enough that no submit gets 429) on a free port of 127.0.0.1.

By default the API runs in single-user mode (no token exists). `--token` creates one before the
API starts and every submit sends it (multi-user mode: a token lookup per request, the jobs owned
by its user); those lines read "POST /jobs (token)".

The load comes from `bench.loadgen`, a separate process: 1 and 16 closed-loop keep-alive
clients, a warm-up second, then `--seconds` (or `--requests`) of measurement. Every answer must
be 201, and afterwards the jobs in the database must number the 201s. Between runs the bench's
jobs are deleted, so each run starts with the preload alone and nothing queued. The same run:
the generator's own ceiling against a stub server, and `GET /health` on the service as the
floor of one request through uvicorn, FastAPI and one database round trip.

`--profile` adds, after the measured SQLite run with the most clients, one more run of that
shape with py-spy sampling the API process; the speedscope file, collapsed stacks and a
top-functions summary go to a directory that is kept (its path is printed). Profiled figures
are printed but are not measurements.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from agent.core.scheduling import Capacity
from agent.db.engine import Database
from agent.db.migrate import upgrade
from agent.db.queue import JobQueue
from agent.db.tokens import TokenStore
from bench import pyspy
from bench.harness import Bench, checkpoint, postgres_database, say, wait_for

ROOT = Path(__file__).resolve().parent.parent
RUN_PY = ROOT / "run.py"
HOST = "127.0.0.1"
JOB_NAME = "bench-submit"
PRELOAD_PREFIX = "preload-"
JOB_SPEC = {
    "name": JOB_NAME,
    "image": "trainyard/train:latest",
    "command": ["true"],
    "resources": {"memory": "256m", "cpus": 0.5},
}
HUGE = Capacity(slots=10**6, memory_bytes=2**50, cpus=1e6, gpu_ids=())
HEARTBEAT_SECONDS = 3.0  # the service counts an agent live for max(3 beats, 15 s)
SERVER_READY_SECONDS = 60.0
SERVER_STOP_SECONDS = 30.0
BASELINE_SECONDS = 2.0
PROFILE_RATE = 200  # samples per second
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- preloading ----------------------------------------------------------------------------------


def _dialect_sql(sqlite: bool) -> dict[str, str]:
    if sqlite:
        return {
            "with": "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq "
            "WHERE i < :n) ",
            "from": "FROM seq",
            "id": "printf('%032x', i)",
            "ts": "strftime('%Y-%m-%d %H:%M:%S', :base + i + {0}, 'unixepoch') || '.000000'",
            "json": "'{0}'",
        }
    return {
        "with": "",
        "from": "FROM generate_series(1, :n) AS seq(i)",
        "id": "lpad(to_hex(i), 32, '0')",
        "ts": "to_timestamp(:base + i + {0})",
        "json": "CAST('{0}' AS JSON)",
    }


def preload(db: Database, count: int) -> float:
    """Insert `count` succeeded jobs, each with its released attempt and four events, in a few
    INSERT ... SELECT statements; seconds taken. Job i was created i seconds after a base an
    hour and `count` seconds ago, started 1 s and finished 2 s after its creation."""
    if count <= 0:
        return 0.0
    started = time.perf_counter()
    d = _dialect_sql(db.is_sqlite)
    ts = d["ts"].format
    command, empty, no_list = (d["json"].format(v) for v in ('["true"]', "{}", "[]"))
    jobs = (
        f"{d['with']}INSERT INTO jobs (id, name, image, command, params, env, memory_bytes, cpus,"
        " gpus, timeout_seconds, max_retries, priority, non_retryable_exit_codes, disk_bytes,"
        " status, reason, outcome, exit_code, attempt_count, retries_used, infra_retries_used,"
        " created_at, updated_at, started_at, finished_at, agent_id) "
        f"SELECT {d['id']}, '{PRELOAD_PREFIX}' || i, 'trainyard/train:latest', "
        f"{command}, {empty}, {empty}, 268435456, 0.5, 0, 259200, 3, 0, {no_list}, "
        "107374182400, 'succeeded', 'exit code 0', 'succeeded', 0, "
        f"1, 0, 0, {ts(0)}, {ts(2)}, {ts(1)}, {ts(2)}, 'preload-agent' {d['from']}"
    )
    attempts = (
        "INSERT INTO attempts (job_id, number, agent_id, lease_token, container_id, gpu_ids,"
        " memory_bytes, cpus, claimed_at, started_at, finished_at, exit_code, oom_killed,"
        " outcome, reason, released_at) "
        f"SELECT id, 1, 'preload-agent', 'preload', 'preload', {no_list}, "
        "memory_bytes, cpus, started_at, started_at, finished_at, 0, false, 'succeeded',"
        " 'exit code 0', finished_at FROM jobs WHERE name LIKE :prefix"
    )
    events = [
        ("created_at", "submitted", "NULL", "'queued'", "NULL", "'api'", "job submitted"),
        ("started_at", "claimed", "'queued'", "'starting'", "1", "agent_id", "claimed"),
        ("started_at", "started", "'starting'", "'running'", "1", "agent_id", "running"),
        ("finished_at", "finished", "'running'", "'succeeded'", "1", "agent_id", "exit code 0"),
    ]
    base = int(time.time()) - count - 3600
    with db.transaction() as s:
        s.execute(text(jobs), {"n": count, "base": base})
        s.execute(text(attempts), {"prefix": f"{PRELOAD_PREFIX}%"})
        for at, kind, before, after, attempt, actor, message in events:
            s.execute(
                text(
                    "INSERT INTO events (job_id, at, kind, from_status, to_status, attempt, actor,"
                    f" message) SELECT id, {at}, '{kind}', {before}, {after}, {attempt}, {actor},"
                    f" '{message}' FROM jobs WHERE name LIKE :prefix"
                ),
                {"prefix": f"{PRELOAD_PREFIX}%"},
            )
    if not db.is_sqlite:  # what autovacuum does soon after a bulk load (SQLite: the app never does)
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    # The rows read back through the product's own mapping: a wrong format fails here.
    job = JobQueue(db).get(f"{1:032x}")
    if job.status.value != "succeeded" or len(job.attempts) != 1:
        raise RuntimeError(f"preloaded job reads back wrong: {job}")
    return time.perf_counter() - started


def count_jobs(db: Database, name: str) -> int:
    with db.reading() as s:
        return int(s.scalar(text("SELECT count(*) FROM jobs WHERE name = :n"), {"n": name}) or 0)


def delete_bench_jobs(db: Database) -> None:
    """Remove what the bench submitted (the preload stays), so the next run starts alike."""
    with db.transaction() as s:
        for table in ("events", "job_labels", "attempts"):
            s.execute(
                text(f"DELETE FROM {table} WHERE job_id IN (SELECT id FROM jobs WHERE name = :n)"),
                {"n": JOB_NAME},
            )
        s.execute(text("DELETE FROM jobs WHERE name = :n"), {"n": JOB_NAME})


class Phantom:
    """A registered agent that could run anything, kept live by this process's heartbeats."""

    def __init__(self, db: Database, agent_id: str) -> None:
        self.queue = JobQueue(db)
        self.agent_id = agent_id
        self.stop = threading.Event()
        self.queue.register_agent(agent_id, "bench-submit-phantom", HUGE)
        self.thread = threading.Thread(target=self._beat, name="phantom-heartbeat", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            with suppress(Exception):  # a missed beat is not a measurement error
                self.queue.heartbeat(self.agent_id, engine_error=None)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


# --- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without any TRAINYARD_* of the caller, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    return {**env, **values}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included) and of its live children (the API's
    worker processes), from /proc."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended meanwhile
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


class Server:
    """`python run.py api` on a free loopback port; its output goes to a log file."""

    def __init__(
        self, tmp: Path, tag: str, database_url: str, log_level: str | None, workers: int
    ) -> None:
        self.port = free_port()
        self.log = tmp / f"api-{tag}.log"
        env = clean_env(
            TRAINYARD_HOST=HOST,
            TRAINYARD_PORT=str(self.port),
            TRAINYARD_DATABASE_URL=database_url,
            TRAINYARD_DATA_DIR=str(tmp / f"data-{tag}"),
            TRAINYARD_LOG_DIR=str(tmp / f"logs-{tag}"),
            TRAINYARD_MAX_QUEUED=str(10**9),
            TRAINYARD_QUOTA_QUEUED=str(10**9),
            TRAINYARD_API_WORKERS=str(workers),
            **({"TRAINYARD_LOG_LEVEL": log_level} if log_level else {}),
        )
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(RUN_PY), "api"],
                env=env,
                cwd=tmp,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.base = f"http://{HOST}:{self.port}"

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited {self.proc.returncode}:\n{self.tail()}")
            try:
                return httpx.get(f"{self.base}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, seconds=SERVER_READY_SECONDS, interval=0.1, what="the API not healthy")

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> tuple[int, int]:
        """Exit status, and how many tracebacks the log holds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(SERVER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code, self.log.read_text(errors="replace").count("Traceback")


def loadgen(
    port: int,
    clients: int,
    *,
    method: str = "GET",
    path: str = "/health",
    body: Path | None = None,
    seconds: float | None = None,
    requests: int | None = None,
    warmup: float = 1.0,
    expect: int = 200,
    headers: Sequence[str] = (),
) -> dict[str, Any]:
    """Run `bench.loadgen` in its own process; its JSON summary."""
    cmd = [sys.executable, "-m", "bench.loadgen", "run", "--port", str(port)]
    for header in headers:
        cmd += ["--header", header]
    cmd += ["--clients", str(clients), "--method", method, "--path", path]
    cmd += ["--warmup", str(warmup), "--expect", str(expect)]
    cmd += ["--requests", str(requests)] if requests else ["--seconds", str(seconds or 10)]
    if body is not None:
        cmd += ["--body-file", str(body)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    checkpoint()  # a Ctrl-C reached the generator too: stop here, not with its traceback
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"loadgen failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@contextmanager
def stub_server() -> Iterator[int]:
    """bench.loadgen's stub (answers 201 at once) in its own process; its port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen", "stub", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # "stub listening on ..."
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the runs ------------------------------------------------------------------------------------


@dataclass
class Result:
    what: str  # "submit", "health", "stub", "submit (profiled)"
    db: str
    preload: int
    clients: int
    rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    ok: int
    errors: int
    seconds: float
    server_cpu_ms: float = math.nan  # per request
    generator_cpu_ms: float = math.nan  # per request
    jobs_in_db: int | None = None
    first_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls, what: str, db: str, preload: int, summary: dict[str, Any], server_cpu: float
    ) -> Result:
        requests = max(1, int(summary["requests"]))
        return cls(
            what=what,
            db=db,
            preload=preload,
            clients=int(summary["clients"]),
            rate=float(summary["rate"]),
            p50_ms=float(summary["p50_ms"]),
            p99_ms=float(summary["p99_ms"]),
            max_ms=float(summary["max_ms"]),
            ok=int(summary["ok"]),
            errors=int(summary["errors"]),
            seconds=float(summary["seconds"]),
            server_cpu_ms=server_cpu * 1000 / (requests + int(summary["warmup_requests"])),
            generator_cpu_ms=float(summary["generator_cpu_seconds"])
            * 1000
            / (requests + int(summary["warmup_requests"])),
            first_error=str(summary.get("first_error", "")),
        )

    def line(self) -> str:
        err = f" ({self.first_error})" if self.first_error else ""
        cpu = f"; CPU per request: loadgen {self.generator_cpu_ms:.2f} ms"
        if not math.isnan(self.server_cpu_ms):
            cpu += f", API {self.server_cpu_ms:.2f} ms"
        jobs = "" if self.jobs_in_db is None else f"; jobs in db {self.jobs_in_db}"
        return (
            f"  {self.what:18} {self.db:8} preload {self.preload:>7,} clients {self.clients:>2}: "
            f"{self.rate:8,.0f}/s  p50 {self.p50_ms:7.1f} ms  p99 {self.p99_ms:7.1f} ms  "
            f"max {self.max_ms:7.1f} ms  ok {self.ok:>6}  errors {self.errors}{err}{cpu}{jobs}"
        )


@dataclass
class Plan:
    dbs: list[str]
    clients: list[int]
    preloads: list[int]
    seconds: float | None
    requests: int | None
    warmup: float
    profile: bool
    profile_dir: Path | None
    log_level: str | None
    json_path: Path | None
    api_workers: int = 1
    token: bool = False  # submits send an API token (multi-user mode), not single-user mode


def measure_ceiling(plan: Plan, results: list[Result]) -> None:
    say("[ceiling] bench.loadgen against its stub server (answers 201 at once, no work)")
    with stub_server() as port:
        for clients in plan.clients:
            checkpoint()
            summary = loadgen(
                port,
                clients,
                method="POST",
                path="/jobs",
                body=None,
                seconds=BASELINE_SECONDS,
                warmup=0.5,
                expect=201,
            )
            results.append(Result.of("loadgen ceiling", "-", 0, summary, math.nan))
            say(results[-1].line())


def measure_database(
    plan: Plan, bench: Bench, kind: str, preload_count: int, body: Path, results: list[Result]
) -> None:
    tag = f"{kind}-{preload_count}"
    with ExitStack() as stack:
        if kind == "sqlite":
            url = f"sqlite:///{bench.tmp / f'{tag}.db'}"
        else:
            name = f"trainyard_bench_submit_{os.getpid()}_{preload_count}"
            url = stack.enter_context(postgres_database(name))
        upgrade(url)
        db = Database(url)
        stack.callback(db.dispose)
        took = preload(db, preload_count)
        say(f"[{kind}, preload {preload_count:,}] database ready; preload took {took:.1f} s")
        headers: list[str] = []
        if plan.token:  # before the API starts: it then requires tokens from the first request
            _info, secret = TokenStore(db).create("bench")
            headers.append(f"Authorization: Bearer {secret}")
        phantom = Phantom(db, bench.agent_id("phantom"))
        stack.callback(phantom.close)
        server = Server(bench.tmp, tag, url, plan.log_level, plan.api_workers)

        def stopped() -> None:
            code, tracebacks = server.stop()
            say(f"  API stopped: exit {code}, {tracebacks} traceback(s) in its log")
            if tracebacks:
                say(server.tail())

        stack.callback(stopped)
        for clients in plan.clients:
            checkpoint()
            summary = loadgen(server.port, clients, seconds=BASELINE_SECONDS, warmup=0.5)
            results.append(Result.of("GET /health", kind, preload_count, summary, math.nan))
            say(results[-1].line())
        for clients in plan.clients:
            checkpoint()
            results.append(
                submit_run(plan, server, db, kind, preload_count, clients, body, headers=headers)
            )
            say(results[-1].line())
            if plan.profile and kind == "sqlite" and clients == max(plan.clients):
                where = (kind, preload_count)
                for gil in (True, False):
                    results.append(
                        profiled_run(
                            plan, bench, server, db, where, clients, body, headers, gil=gil
                        )
                    )
                    say(results[-1].line())


def submit_run(
    plan: Plan,
    server: Server,
    db: Database,
    kind: str,
    preload_count: int,
    clients: int,
    body: Path,
    what: str = "POST /jobs",
    headers: Sequence[str] = (),
) -> Result:
    delete_bench_jobs(db)
    cpu = server.cpu()
    summary = loadgen(
        server.port,
        clients,
        method="POST",
        path="/jobs",
        body=body,
        seconds=plan.seconds,
        requests=plan.requests,
        warmup=plan.warmup,
        expect=201,
        headers=headers,
    )
    if headers:
        what += " (token)"
    result = Result.of(what, kind, preload_count, summary, server.cpu() - cpu)
    result.jobs_in_db = count_jobs(db, JOB_NAME)
    created = int(summary["ok"]) + int(summary["warmup_requests"])
    if result.jobs_in_db != created:
        result.first_error = (
            result.first_error or f"{result.jobs_in_db} jobs in the database, {created} created"
        )
        result.errors += abs(result.jobs_in_db - created)
    delete_bench_jobs(db)
    return result


def profiled_run(
    plan: Plan,
    bench: Bench,
    server: Server,
    db: Database,
    where: tuple[str, int],
    clients: int,
    body: Path,
    headers: Sequence[str],
    *,
    gil: bool,
) -> Result:
    """One more submit run with py-spy on the API: with `gil`, samples of the thread holding
    the GIL (where its one core goes); without, of every thread not idle (where requests wait)."""
    kind, preload_count = where
    mode = "gil" if gil else "wall"
    tag = f"{kind}-{preload_count}-{clients}c-{mode}"
    out = plan.profile_dir or Path(f"/tmp/trainyard-bench-submit-profile-{bench.run_id}")
    out.mkdir(parents=True, exist_ok=True)
    speedscope = out / f"api-{tag}.speedscope.json"
    log = out / "py-spy.log"
    spy = pyspy.start_recording(server.proc.pid, speedscope, rate=PROFILE_RATE, log=log, gil=gil)
    try:
        time.sleep(1.0)  # py-spy attaches
        if spy.poll() is not None:
            raise RuntimeError(f"py-spy exited {spy.returncode}: see {out / 'py-spy.log'}")
        result = submit_run(
            plan, server, db, kind, preload_count, clients, body, f"POST (py-spy {mode})", headers
        )
    finally:
        code = pyspy.stop_recording(spy)
    if not speedscope.exists():
        raise RuntimeError(f"py-spy exited {code} without a profile: see {out / 'py-spy.log'}")
    document = json.loads(speedscope.read_text())
    (out / f"api-{tag}.folded.txt").write_text("\n".join(pyspy.folded(document)) + "\n")
    summary = pyspy.report(speedscope)
    top = out / f"api-{tag}.top.txt"
    top.write_text(summary + "\n")
    say(f"  profile: {speedscope} (open in https://www.speedscope.app), {top}")
    for line in summary.splitlines()[:14]:
        say(f"    {line}")
    result.extra["profile_dir"] = str(out)
    return result


# --- reporting -----------------------------------------------------------------------------------

GOALS = {"sqlite": (1500.0, 50.0), "postgres": (1000.0, 50.0)}


def verdict(result: Result, clients: int) -> str:
    goal = GOALS.get(result.db)
    if goal is None or result.clients != clients or result.what != "POST /jobs":
        return ""
    rate, p99 = goal
    met = result.rate >= rate and result.p99_ms <= p99 and result.errors == 0
    return f"{'meets' if met else 'misses'} ≥{rate:,.0f}/s p99 ≤{p99:.0f} ms"


def summary_table(plan: Plan, facts: dict[str, str], results: list[Result]) -> None:
    say()
    say("=" * 100)
    say("bench.submit summary — " + ", ".join(f"{k} {v}" for k, v in facts.items()))
    say(
        f"   {'what':18} {'db':8} {'preload':>8} {'clients':>7} {'req/s':>8} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'errors':>6} {'srv CPU ms/req':>14}  goal (16 clients)"
    )
    for r in results:
        cpu = "-" if math.isnan(r.server_cpu_ms) else f"{r.server_cpu_ms:.2f}"
        say(
            f"   {r.what:18} {r.db:8} {r.preload:>8,} {r.clients:>7} {r.rate:>8,.0f} "
            f"{r.p50_ms:>7.1f} {r.p99_ms:>7.1f} {r.errors:>6} {cpu:>14}  {verdict(r, 16)}"
        )
    say(
        "   closed loop, keep-alive; loadgen ceiling = the generator against a stub server (a"
        " lower bound of its own limit); POST (py-spy ...) ran under py-spy: not a measurement"
    )


def write_json(path: Path, facts: dict[str, str], results: list[Result], status: int) -> None:
    def clean(value: Any) -> Any:
        return None if isinstance(value, float) and math.isnan(value) else value

    rows = [{k: clean(v) for k, v in vars(r).items()} for r in results]
    path.write_text(
        json.dumps({"bench": "submit", "facts": facts, "status": status, "results": rows}, indent=1)
    )


def run(plan: Plan, bench: Bench) -> int:
    results: list[Result] = []
    body = bench.tmp / "job.json"
    body.write_text(json.dumps(JOB_SPEC))
    status = 1
    try:
        measure_ceiling(plan, results)
        for kind in plan.dbs:
            for preload_count in plan.preloads:
                measure_database(plan, bench, kind, preload_count, body, results)
        status = 1 if any(r.errors for r in results) else 0
    finally:
        summary_table(plan, bench.facts, results)
        if plan.json_path is not None:
            write_json(plan.json_path, bench.facts, results, status)
            say(f"figures written to {plan.json_path}")
    return status


def _ints(text_: str, what: str, parser: argparse.ArgumentParser) -> list[int]:
    try:
        values = [int(part.replace("_", "")) for part in text_.split(",") if part.strip()]
    except ValueError:
        parser.error(f"{what} takes whole numbers like 1,16")
    if not values or min(values) < 0:
        parser.error(f"{what} takes whole numbers ≥ 0")
    return values


def parse_args(argv: list[str] | None) -> Plan:
    parser = argparse.ArgumentParser(
        prog="python -m bench.submit",
        description="POST /jobs throughput and latency on an API-only service process.",
    )
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--clients", default="1,16", help="concurrent clients per run (1,16)")
    parser.add_argument("--preload", default="0,100000", help="finished jobs already there")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--requests", type=int, default=None, help="requests per run instead")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the API in one extra SQLite run"
    )
    parser.add_argument("--profile-dir", type=Path, default=None, help="where profiles go")
    parser.add_argument(
        "--log-level", default=None, help="TRAINYARD_LOG_LEVEL of the API (default: its own)"
    )
    parser.add_argument(
        "--api-workers", type=int, default=1, help="TRAINYARD_API_WORKERS of the API (1)"
    )
    parser.add_argument(
        "--token",
        action="store_true",
        help="submit with an API token (multi-user mode) instead of in single-user mode",
    )
    args = parser.parse_args(argv)
    if args.api_workers < 1:
        parser.error("--api-workers must be at least 1")
    clients = _ints(args.clients, "--clients", parser)
    if min(clients) < 1:
        parser.error("--clients must be at least 1")
    if args.seconds <= 0 or (args.requests is not None and args.requests < 1) or args.warmup < 0:
        parser.error("--seconds and --requests must be positive, --warmup not negative")
    return Plan(
        dbs=["sqlite", "postgres"] if args.db == "both" else [args.db],
        clients=clients,
        preloads=_ints(args.preload, "--preload", parser),
        seconds=None if args.requests else args.seconds,
        requests=args.requests,
        warmup=args.warmup,
        profile=args.profile,
        profile_dir=args.profile_dir,
        log_level=args.log_level,
        json_path=args.json,
        api_workers=args.api_workers,
        token=args.token,
    )


def main(argv: list[str] | None = None) -> int:
    plan = parse_args(argv)
    bench = Bench("submit", engine=False)
    return bench.run(lambda: run(plan, bench))


if __name__ == "__main__":
    sys.exit(main())
