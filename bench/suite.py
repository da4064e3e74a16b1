"""The whole bench suite in one command (`python -m bench`, `make bench`): each bench runs as a
subprocess, its output shown as it comes and kept in a log, then one table of headline figures.

    python -m bench [--quick] [--only submit,claims,throughput] [--skip-docker]
                    [--docker-lock FILE] [--json PATH] [--logs DIR]

1. bench.submit: HTTP `POST /jobs` req/s, p50/p99 at 1 and 16 clients, SQLite and PostgreSQL,
   0 and 100,000 (quick: 10,000) preloaded jobs; read from its `--json` file.
2. bench.claims --skip-docker --db both: claims/s for 1 agent and 4 agent processes; read from
   its summary table.
3. bench.throughput --concurrency 2,4 --rounds R --db sqlite (Docker): the dispatch ratio
   trainyard/direct per concurrency, SQL statements per job, and idle submit→running minus the
   engine's own create+start; read from its printed lines, tolerantly (what is not found is
   shown as n/a: the bench's output is the reference). A bench.throughput that takes only one
   `--concurrency` is run once per concurrency instead.

The parsing below is pure and unit-tested (tests/unit/test_bench_suite.py).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench.harness import host_facts

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ("submit", "claims", "throughput")
DOCKER_BENCHES = {"throughput"}
CONCURRENCIES = (2, 4)


@dataclass(frozen=True)
class Mode:
    submit: list[str]
    claims: list[str]
    throughput: list[str]  # without --concurrency
    description: str


QUICK = Mode(
    submit=["--seconds", "3", "--warmup", "0.5", "--preload", "0,10000"],
    claims=["--jobs", "200"],
    throughput=["--jobs", "20", "--rounds", "2", "--latency-jobs", "5"],
    description="quick: submit 3 s per run, preload 0/10,000; claims 200 jobs; dispatch 20 jobs"
    " x 2 rounds",
)
FULL = Mode(
    submit=["--seconds", "10", "--preload", "0,100000"],
    claims=["--jobs", "500"],
    throughput=["--jobs", "100", "--rounds", "2", "--latency-jobs", "20"],
    description="full: submit 10 s per run, preload 0/100,000; claims 500 jobs; dispatch 100"
    " jobs x 2 rounds",
)


# --- parsing (pure) ------------------------------------------------------------------------------

CLAIMS_ROW = re.compile(
    r"^\s+(?P<db>sqlite|postgres)\s+(?P<label>\d+ (?:thread|threads|process|processes))\s+"
    r"(?P<held>[\d,]+|-)\s+(?P<released>[\d,]+|-)\s"
)


def _number(text: str) -> float | None:
    text = text.replace(",", "").strip()
    try:
        return float(text)
    except ValueError:
        return None


def parse_claims(output: str) -> dict[tuple[str, str], tuple[float | None, float | None]]:
    """{(db, agents label): (held claims/s, released claims/s)} from bench.claims' summary."""
    rows: dict[tuple[str, str], tuple[float | None, float | None]] = {}
    for line in output.splitlines():
        match = CLAIMS_ROW.match(line)
        if match:
            key = (match["db"], match["label"])
            rows[key] = (_number(match["held"]), _number(match["released"]))
    return rows


@dataclass
class Dispatch:
    """What bench.throughput printed, per concurrency where it says which."""

    ratios: dict[int, float] = field(default_factory=dict)
    round_ratios: dict[int, list[float]] = field(default_factory=dict)
    agent_statements: list[float] = field(default_factory=list)
    submit_statements: list[float] = field(default_factory=list)
    running_p50_ms: list[float] = field(default_factory=list)
    create_start_p50_ms: list[float] = field(default_factory=list)

    @property
    def idle_overhead_ms(self) -> float | None:
        """Idle submit→running p50 minus the direct create+start p50 (mean over runs)."""
        if not self.running_p50_ms or not self.create_start_p50_ms:
            return None
        pairs = zip(self.running_p50_ms, self.create_start_p50_ms, strict=False)
        return statistics.fmean(r - c for r, c in pairs)


CONCURRENCY = re.compile(r"\bconcurrency[= ](\d+)\b|\b(\d+) slots\b|\bc=(\d+)\b")
RATIO = re.compile(r"ratio trainyard/direct\s*=\s*([\d.]+)")
PER_ROUND = re.compile(r"ratio per round:\s*([\d., ]+)")
STATEMENTS = re.compile(r"SQL by (agent|bench/api|api|bench):\s*([\d.]+) statements/job")
RUNNING = re.compile(r"submit→running p50 (\d+(?:\.\d+)?)")
CREATE_START = re.compile(r"direct create\+start p50 (\d+(?:\.\d+)?)")


def parse_throughput(output: str) -> Dispatch:
    """Tolerant: each ratio belongs to the last concurrency named before it (a summary header
    `concurrency=C`, `C slots`, `c=C`); a figure that is not found is simply absent."""
    found = Dispatch()
    current: int | None = None
    for line in output.splitlines():
        for named in CONCURRENCY.finditer(line):
            current = int(next(g for g in named.groups() if g))
        if (match := RATIO.search(line)) and current is not None:
            found.ratios[current] = float(match[1])
        if (match := PER_ROUND.search(line)) and current is not None:
            values = [_number(v) for v in match[1].split(",")]
            found.round_ratios[current] = [v for v in values if v is not None]
        for who, count in STATEMENTS.findall(line):
            target = found.agent_statements if who == "agent" else found.submit_statements
            target.append(float(count))
        if (match := RUNNING.search(line)) and (other := CREATE_START.search(line)):
            found.running_p50_ms.append(float(match[1]))
            found.create_start_p50_ms.append(float(other[1]))
    return found


def old_concurrency_cli(output: str, status: int) -> bool:
    """bench.throughput from before `--concurrency 2,4` refused the list."""
    return status == 2 and "--concurrency" in output and "invalid int value" in output


# --- running -------------------------------------------------------------------------------------

STOP = {"requested": False}


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    # The running bench got the same Ctrl-C (same process group) and cleans up on its own;
    # the suite only starts nothing more. SIGTERM is passed on to it (see `run_bench`).
    STOP["requested"] = True


@contextlib.contextmanager
def docker_lock(path: Path | None) -> Iterator[None]:
    """Hold an exclusive flock on `path` (shared hosts: one Docker user at a time)."""
    if path is None:
        yield
        return
    with path.open("a") as handle:
        print(f"[suite] waiting for the Docker lock {path}", flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_bench(module: str, args: list[str], log: Path) -> tuple[int, str]:
    """`python -m bench.<module> args`, its output shown live and kept; (status, output)."""
    cmd = [sys.executable, "-m", f"bench.{module}", *args]
    print(f"\n[suite] $ {' '.join(cmd[1:])}", flush=True)
    lines: list[str] = []
    with log.open("a") as keep:
        keep.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        previous = signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                keep.write(line)
                lines.append(line)
            status = proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
    return status, "".join(lines)


@dataclass
class Outcome:
    status: dict[str, int] = field(default_factory=dict)
    submit: dict[str, Any] | None = None
    claims: dict[tuple[str, str], tuple[float | None, float | None]] = field(default_factory=dict)
    dispatch: Dispatch | None = None


def run_submit(mode: Mode, scratch: Path, outcome: Outcome) -> None:
    path = scratch / "submit.json"
    status, _ = run_bench("submit", [*mode.submit, "--json", str(path)], scratch / "submit.log")
    outcome.status["submit"] = status
    if path.exists():
        outcome.submit = json.loads(path.read_text())


def run_claims(mode: Mode, scratch: Path, outcome: Outcome) -> None:
    args = ["--skip-docker", "--db", "both", *mode.claims]
    status, output = run_bench("claims", args, scratch / "claims.log")
    outcome.status["claims"] = status
    outcome.claims = parse_claims(output)


def run_throughput(mode: Mode, scratch: Path, outcome: Outcome, lock: Path | None) -> None:
    log = scratch / "throughput.log"
    common = [*mode.throughput, "--db", "sqlite"]
    with docker_lock(lock):
        concurrency = ",".join(str(c) for c in CONCURRENCIES)
        status, output = run_bench("throughput", ["--concurrency", concurrency, *common], log)
        if old_concurrency_cli(output, status):
            print("[suite] this bench.throughput takes one --concurrency: one run each", flush=True)
            outputs: list[str] = []
            for c in CONCURRENCIES:
                if STOP["requested"]:
                    break
                status_c, out = run_bench("throughput", ["--concurrency", str(c), *common], log)
                status = max(status if outputs else 0, status_c)
                outputs.append(out)
            output = "\n".join(outputs)
    outcome.status["throughput"] = status
    outcome.dispatch = parse_throughput(output)


# --- the summary ---------------------------------------------------------------------------------


def _f(value: float | None, spec: str = ",.0f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


SUBMIT_GOALS = {"sqlite": 1500.0, "postgres": 1000.0}
SUBMIT_GOAL_CLIENTS = 16
SUBMIT_GOAL_P99_MS = 50.0


def goal_verdict(row: dict[str, Any]) -> str:
    """'meets'/'misses' for a 16-client POST /jobs row of bench.submit's JSON, else ''."""
    goal = SUBMIT_GOALS.get(str(row.get("db")))
    if goal is None or row.get("clients") != SUBMIT_GOAL_CLIENTS:
        return ""
    p99 = row.get("p99_ms")
    met = (
        (row.get("rate") or 0) >= goal
        and p99 is not None
        and p99 <= SUBMIT_GOAL_P99_MS
        and not row.get("errors")
    )
    return "meets" if met else "misses"


def summary_lines(outcome: Outcome, mode: Mode, facts: str) -> list[str]:
    lines = ["", "=" * 100, f"bench suite summary ({mode.description})", f"  {facts}"]
    if "submit" in outcome.status:
        lines.append(
            "HTTP POST /jobs (bench.submit: API-only process, closed-loop keep-alive clients;"
            " goal at 16 clients: SQLite ≥1,500/s, PostgreSQL ≥1,000/s, p99 ≤50 ms)"
        )
        rows = (outcome.submit or {}).get("results", [])
        lines.append(
            f"  {'db':9} {'preload':>8} {'clients':>7} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
            f" {'errors':>6}  goal"
        )
        for r in rows:
            if r["what"] != "POST /jobs":
                continue
            lines.append(
                f"  {r['db']:9} {r['preload']:>8,} {r['clients']:>7} {_f(r['rate']):>8} "
                f"{_f(r['p50_ms'], '.1f'):>7} {_f(r['p99_ms'], '.1f'):>7} {r['errors']:>6}"
                f"  {goal_verdict(r)}"
            )
        ceiling = [r for r in rows if r["what"] == "loadgen ceiling"]
        if ceiling:
            parts = ", ".join(f"{r['clients']} clients {_f(r['rate'])}/s" for r in ceiling)
            lines.append(f"  load generator ceiling (stub server): {parts}")
        if not rows:
            lines.append("  n/a (no figures: see the log)")
    if "claims" in outcome.status:
        lines.append("Claims/s (bench.claims --skip-docker: held / released)")
        for db in ("sqlite", "postgres"):
            one = outcome.claims.get((db, "1 thread"), (None, None))
            four = outcome.claims.get((db, "4 processes"), (None, None))
            lines.append(
                f"  {db:9} 1 agent {_f(one[0])} / {_f(one[1])}    "
                f"4 agent processes {_f(four[0])} / {_f(four[1])}"
            )
    if "throughput" in outcome.status:
        d = outcome.dispatch or Dispatch()
        lines.append("Dispatch (bench.throughput, SQLite, ABBA rounds; trainyard/direct wall time)")
        for c in CONCURRENCIES:
            rounds = d.round_ratios.get(c)
            per = f" (rounds {', '.join(f'{v:.2f}' for v in rounds)})" if rounds else ""
            lines.append(f"  concurrency {c}: ratio {_f(d.ratios.get(c), '.2f')}{per}")
        agent = statistics.fmean(d.agent_statements) if d.agent_statements else None
        submit = statistics.fmean(d.submit_statements) if d.submit_statements else None
        lines.append(
            f"  SQL statements per job: agent {_f(agent, '.1f')}, bench/api side"
            f" {_f(submit, '.1f')} (submits plus the bench's own polling)"
        )
        running = statistics.fmean(d.running_p50_ms) if d.running_p50_ms else None
        engine = statistics.fmean(d.create_start_p50_ms) if d.create_start_p50_ms else None
        lines.append(
            f"  idle submit→running p50 {_f(running)} ms - engine create+start p50 "
            f"{_f(engine)} ms = {_f(d.idle_overhead_ms)} ms"
        )
    statuses = ", ".join(f"{k} {v}" for k, v in outcome.status.items())
    lines.append(f"exit status: {statuses or 'nothing ran'}")
    return lines


def facts_line() -> str:
    facts = host_facts(None)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return when + ", " + ", ".join(f"{k} {v}" for k, v in facts.items())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a few minutes")
    parser.add_argument("--only", default=",".join(BENCHES), help="benches to run, in order")
    parser.add_argument("--skip-docker", action="store_true", help="leave out bench.throughput")
    parser.add_argument(
        "--docker-lock", type=Path, default=None, help="flock this file around Docker benches"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the headline figures")
    parser.add_argument("--logs", type=Path, default=None, help="keep the benches' logs here")
    args = parser.parse_args(argv)
    args.benches = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(args.benches) - set(BENCHES)
    if unknown:
        parser.error(f"--only: unknown bench(es) {sorted(unknown)}; known: {', '.join(BENCHES)}")
    if args.skip_docker:
        args.benches = [b for b in args.benches if b not in DOCKER_BENCHES]
    return args


def write_json(path: Path, outcome: Outcome, mode: Mode, facts: str) -> None:
    d = outcome.dispatch
    payload = {
        "mode": mode.description,
        "facts": facts,
        "status": outcome.status,
        "submit": outcome.submit,
        "claims": [
            {"db": db, "agents": label, "held": held, "released": released}
            for (db, label), (held, released) in outcome.claims.items()
        ],
        "dispatch": None
        if d is None
        else {
            "ratios": d.ratios,
            "round_ratios": d.round_ratios,
            "agent_statements_per_job": d.agent_statements,
            "submit_statements_per_job": d.submit_statements,
            "idle_submit_to_running_minus_create_start_ms": d.idle_overhead_ms,
        },
    }
    path.write_text(json.dumps(payload, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = QUICK if args.quick else FULL
    signal.signal(signal.SIGINT, _on_signal)
    started = time.monotonic()
    scratch = args.logs or Path(tempfile.mkdtemp(prefix="trainyard-bench-suite-", dir="/tmp"))
    scratch.mkdir(parents=True, exist_ok=True)
    facts = facts_line()
    print(f"bench suite ({mode.description}); logs in {scratch}\n  {facts}", flush=True)
    outcome = Outcome()
    steps = {
        "submit": lambda: run_submit(mode, scratch, outcome),
        "claims": lambda: run_claims(mode, scratch, outcome),
        "throughput": lambda: run_throughput(mode, scratch, outcome, args.docker_lock),
    }
    for name in args.benches:
        if STOP["requested"]:
            print(f"[suite] stopped before {name}", flush=True)
            break
        steps[name]()
    for line in summary_lines(outcome, mode, facts):
        print(line)
    if args.json is not None:
        write_json(args.json, outcome, mode, facts)
        print(f"figures written to {args.json}")
    print(f"suite wall time {time.monotonic() - started:.0f} s; logs in {scratch}", flush=True)
    if STOP["requested"]:
        return 130
    return 1 if any(outcome.status.values()) else 0
