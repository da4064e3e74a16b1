"""A small HTTP/1.1 load generator, and a stub server to measure its own ceiling.

    python -m bench.loadgen run --port P [--method POST --path /jobs --body-file F]
                                [--clients 16] [--seconds 10 | --requests N] [--warmup 1]
                                [--expect 201]
    python -m bench.loadgen stub --port P      # answers every request at once with a 201

`run` is a closed loop: each client is one keep-alive connection (asyncio streams, one event
loop in this process) that sends its next request as soon as the previous answer is read. It
prints one JSON object: requests, errors (status other than --expect, or a broken connection),
throughput, latency percentiles, and this process's own CPU time, so a reader can see whether
the generator, not the server, was the limit. Only 127.0.0.1 is ever a target.

The summary helpers (`percentile`, `summarize`) are pure and unit-tested.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import resource
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"  # loopback only, always
CONNECT_SECONDS = 10.0
REQUEST_SECONDS = 60.0  # a request slower than this is an error (and the client stops)
STUB_BODY = json.dumps({"id": "0" * 32, "status": "queued", "pad": "x" * 900}).encode()


# --- figures (pure) ------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values; nan when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


@dataclass
class Summary:
    clients: int
    requests: int  # measured requests that completed with any answer or error
    ok: int  # answered with the expected status
    errors: int
    statuses: dict[str, int]
    seconds: float  # measured window: first measured send .. last measured answer
    rate: float  # ok answers per second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    generator_cpu_seconds: float = 0.0
    warmup_requests: int = 0
    first_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def summarize(
    clients: int,
    latencies: Sequence[float],
    statuses: Counter[str],
    seconds: float,
    *,
    expect: int,
    first_error: str = "",
) -> Summary:
    """Figures of one measured window; latencies in seconds (of the expected answers only)."""
    ok = statuses.get(str(expect), 0)
    total = sum(statuses.values())
    return Summary(
        clients=clients,
        requests=total,
        ok=ok,
        errors=total - ok,
        statuses=dict(statuses),
        seconds=seconds,
        rate=ok / seconds if seconds > 0 else 0.0,
        p50_ms=percentile(latencies, 50) * 1000,
        p90_ms=percentile(latencies, 90) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        max_ms=max(latencies, default=math.nan) * 1000,
        first_error=first_error,
    )


# --- the client ----------------------------------------------------------------------------------


def build_request(
    method: str, path: str, body: bytes, port: int, headers: Sequence[str] = ()
) -> bytes:
    head = [
        f"{method} {path} HTTP/1.1",
        f"Host: {HOST}:{port}",
        "Connection: keep-alive",
        "Accept: application/json",
        "User-Agent: trainyard-bench-loadgen",
        *headers,
    ]
    if body or method in ("POST", "PUT", "PATCH"):
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    """One response's status code; its body is read and dropped (Content-Length only)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        lowered = name.strip().lower()
        if lowered == b"content-length":
            length = int(value.strip())
        elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
            raise ValueError("chunked responses are not supported by this generator")
    if length:
        await reader.readexactly(length)
    return status


@dataclass
class Plan:
    port: int
    request: bytes
    clients: int
    warmup: float
    seconds: float | None
    requests: int | None
    expect: int


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    warmup: int = 0
    sent: int = 0  # measured requests handed out (for --requests)
    first_error: str = ""
    last_end: float = 0.0


async def client(
    plan: Plan,
    tally: Tally,
    stream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    marks: dict[str, float],
) -> None:
    reader, writer = stream
    try:
        while True:
            now = time.perf_counter()
            measured = now >= marks["measure"]
            if measured:
                if plan.requests is not None:
                    if tally.sent >= plan.requests:
                        return
                    tally.sent += 1
                elif now >= marks["end"]:
                    return
            began = time.perf_counter()
            try:
                writer.write(plan.request)
                status = await asyncio.wait_for(read_response(reader), REQUEST_SECONDS)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                if measured:
                    tally.statuses["error"] += 1
                    tally.first_error = tally.first_error or f"{type(exc).__name__}: {exc}"
                return  # the connection is unusable: this client stops
            ended = time.perf_counter()
            if not measured:
                tally.warmup += 1
                continue
            tally.statuses[str(status)] += 1
            tally.last_end = max(tally.last_end, ended)
            if status == plan.expect:
                tally.latencies.append(ended - began)
            elif not tally.first_error:
                tally.first_error = f"HTTP {status}"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def drive(plan: Plan) -> Summary:
    tally = Tally()
    streams = await asyncio.gather(  # every connection is open before the clock starts
        *(
            asyncio.wait_for(asyncio.open_connection(HOST, plan.port), CONNECT_SECONDS)
            for _ in range(plan.clients)
        )
    )
    began = time.perf_counter()
    marks = {"measure": began + plan.warmup}
    marks["end"] = marks["measure"] + (plan.seconds or math.inf)
    tasks = [asyncio.create_task(client(plan, tally, stream, marks)) for stream in streams]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            tally.statuses["error"] += 1
            tally.first_error = tally.first_error or f"{type(result).__name__}: {result}"
    window = max(0.0, tally.last_end - marks["measure"]) if tally.last_end else 0.0
    summary = summarize(
        plan.clients,
        tally.latencies,
        tally.statuses,
        window,
        expect=plan.expect,
        first_error=tally.first_error,
    )
    summary.warmup_requests = tally.warmup
    return summary


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_main(args: argparse.Namespace) -> int:
    body = Path(args.body_file).read_bytes() if args.body_file else b""
    plan = Plan(
        port=args.port,
        request=build_request(args.method, args.path, body, args.port, args.header),
        clients=args.clients,
        warmup=args.warmup,
        seconds=None if args.requests else args.seconds,
        requests=args.requests,
        expect=args.expect,
    )
    cpu = cpu_seconds()
    summary = asyncio.run(drive(plan))
    summary.generator_cpu_seconds = cpu_seconds() - cpu
    print(json.dumps(asdict(summary)), flush=True)
    return 0


# --- the stub server -----------------------------------------------------------------------------


async def stub_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    answer = (
        b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(STUB_BODY)}\r\n\r\n".encode()
        + STUB_BODY
    )
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            writer.write(answer)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve_stub(port: int) -> None:
    server = await asyncio.start_server(stub_connection, HOST, port, backlog=1024)
    print(f"stub listening on {HOST}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="drive a server on 127.0.0.1 and print one JSON summary")
    run.add_argument("--port", type=int, required=True)
    run.add_argument("--method", default="GET")
    run.add_argument("--path", default="/health")
    run.add_argument("--body-file", default="")
    run.add_argument("--clients", type=int, default=1)
    run.add_argument("--seconds", type=float, default=10.0)
    run.add_argument("--requests", type=int, default=None, help="instead of --seconds")
    run.add_argument("--warmup", type=float, default=1.0, help="seconds not measured")
    run.add_argument("--expect", type=int, default=200)
    run.add_argument(
        "--header", action="append", default=[], help="'Name: value', sent with every request"
    )
    stub = sub.add_parser("stub", help="a server that answers 201 at once, to 127.0.0.1 only")
    stub.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "run" and (args.clients < 1 or (args.requests or 1) < 1):
        parser.error("--clients and --requests must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "stub":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_stub(args.port))
        return 0
    return run_main(args)


if __name__ == "__main__":
    sys.exit(main())
