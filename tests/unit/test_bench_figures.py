"""The pure parts of the bench suite: percentiles, the load generator's summary, py-spy
profile reading and the suite's parsing of other benches' output (no bench runs here)."""

from __future__ import annotations

import math
from collections import Counter

from bench.loadgen import build_request, percentile, summarize
from bench.pyspy import folded, top_functions
from bench.suite import goal_verdict, old_concurrency_cli, parse_claims, parse_throughput


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([5.0, 1.0, 3.0], 50) == 3.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_summary_counts_other_statuses_as_errors() -> None:
    latencies = [0.001 * i for i in range(1, 101)]
    statuses = Counter({"201": 100, "429": 3, "error": 1})
    s = summarize(16, latencies, statuses, 2.0, expect=201, first_error="HTTP 429")
    assert (s.requests, s.ok, s.errors) == (104, 100, 4)
    assert s.rate == 50.0
    assert s.p50_ms == 50.0
    assert round(s.p99_ms, 6) == 99.0
    assert round(s.max_ms, 6) == 100.0
    assert s.first_error == "HTTP 429"


def test_request_is_keep_alive_with_a_content_length() -> None:
    request = build_request("POST", "/jobs", b'{"a": 1}', 8000)
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /jobs HTTP/1.1\r\n")
    assert b"Host: 127.0.0.1:8000" in head
    assert b"Connection: keep-alive" in head
    assert b"Content-Length: 8" in head
    assert body == b'{"a": 1}'


def speedscope(samples: list[list[int]]) -> dict[str, object]:
    frames = [
        {"name": "main", "file": "/x/site-packages/uvicorn/main.py"},
        {"name": "submit", "file": "/repo/agent/service.py"},
        {"name": "execute", "file": "/x/site-packages/sqlalchemy/engine.py"},
    ]
    return {
        "shared": {"frames": frames},
        "profiles": [{"type": "sampled", "samples": samples, "weights": [0.01] * len(samples)}],
    }


def test_top_functions_own_and_total() -> None:
    seconds, by_own, by_total = top_functions(speedscope([[0, 1, 2], [0, 1, 2], [0, 1], [0]]))
    assert math.isclose(seconds, 0.04)
    own = {r.function: r.own for r in by_own}
    assert own == {
        "execute (sqlalchemy/engine.py)": 0.5,
        "submit (/repo/agent/service.py)": 0.25,
        "main (uvicorn/main.py)": 0.25,
    }
    assert by_total[0].function == "main (uvicorn/main.py)"
    assert by_total[0].total == 1.0


def test_recursion_counts_once_in_total() -> None:
    _, _, by_total = top_functions(speedscope([[0, 1, 1, 1]]))
    assert {r.function: r.total for r in by_total}["submit (/repo/agent/service.py)"] == 1.0


def test_folded_stacks() -> None:
    lines = folded(speedscope([[0, 1], [0, 1], [0]]))
    assert lines[0] == "main (uvicorn/main.py);submit (/repo/agent/service.py) 0.02"


CLAIMS_SUMMARY = """\
bench.claims summary — cores 2
1. claim throughput, 500 jobs per run, no Docker; claims/s of all agents,
   db       agents        held/s released/s  ms held  ms rel.  ahead submit/s duplicates  check
   sqlite   1 thread         164        125      6.1      8.0      0      470          0  ok
   sqlite   4 threads        160        120     24.9     33.1      0      470          0  ok
   sqlite   4 processes    1,174          -     23.0        -      0      470          0  ok
   postgres 1 thread         110         85      9.1     11.8      0      245          0  ok
   held: claims pile up unreleased
"""


def test_parse_claims_summary() -> None:
    rows = parse_claims(CLAIMS_SUMMARY)
    assert rows[("sqlite", "1 thread")] == (164.0, 125.0)
    assert rows[("sqlite", "4 processes")] == (1174.0, None)
    assert rows[("postgres", "1 thread")] == (110.0, 85.0)
    assert ("postgres", "4 processes") not in rows


LATENCY = (
    "latency (ms, n=5) : submit→claim p50 4 p95 5 | submit→running p50 {0} p95 280"
    " | claim→running p50 249 p95 270 | direct create+start p50 {1} p95 240"
)
THROUGHPUT_OLD = f"""\
[round 1/2] trainyard (sqlite): 20 jobs, 2 slots
  SQL by agent: 21.0 statements/job, 15 ms/job in the database (of which 6 waiting ...)
  SQL by bench/api: 5.0 statements/job, 2 ms/job in the database (of which 0 waiting ...)

jobs=20 concurrency=2 db=sqlite submit=service rounds=2 engine=20.10.24
trainyard          : 4.1 s  (4.88 jobs/s)   ratio trainyard/direct = 1.14   (all final at 4.2 s)
  (mean of 2 rounds; ratio per round: 1.16, 1.12)
{LATENCY.format(253, 224)}
jobs=20 concurrency=4 db=sqlite submit=service rounds=2 engine=20.10.24
trainyard          : 3.0 s  (6.6 jobs/s)   ratio trainyard/direct = 1.30   (all final at 3.1 s)
{LATENCY.format(261, 231)}
"""


def test_parse_throughput_tolerates_the_old_and_new_shapes() -> None:
    d = parse_throughput(THROUGHPUT_OLD)
    assert d.ratios == {2: 1.14, 4: 1.30}
    assert d.round_ratios == {2: [1.16, 1.12]}
    assert d.agent_statements == [21.0]
    assert d.submit_statements == [5.0]
    assert d.idle_overhead_ms == ((253 - 224) + (261 - 231)) / 2
    empty = parse_throughput("something else entirely\nratio trainyard/direct = 1.1\n")
    assert empty.ratios == {}  # no concurrency named: not guessed
    assert empty.idle_overhead_ms is None


def test_old_concurrency_cli_is_recognised() -> None:
    error = "python -m bench.throughput: error: argument --concurrency: invalid int value: '2,4'"
    assert old_concurrency_cli(error, 2)
    assert not old_concurrency_cli(error, 0)
    assert not old_concurrency_cli("fine", 2)


def test_goal_verdict_of_a_submit_row() -> None:
    row = {"db": "sqlite", "clients": 16, "rate": 1600.0, "p99_ms": 40.0, "errors": 0}
    assert goal_verdict(row) == "meets"
    assert goal_verdict({**row, "p99_ms": 51.0}) == "misses"
    assert goal_verdict({**row, "errors": 1}) == "misses"
    assert goal_verdict({**row, "db": "postgres", "rate": 1000.0}) == "meets"
    assert goal_verdict({**row, "rate": 1400.0}) == "misses"
    assert goal_verdict({**row, "clients": 1}) == ""
