"""The log-capture path: how fast and how completely the agent copies a container's output.

    python -m bench.logcapture [--mb 200] [--line-bytes 100] [--rounds 2]

1. Capture rate. A container (no network, user 1000:1000) prints `--mb` MiB of numbered
   `--line-bytes`-byte lines as fast as `seq` can. Baseline: `docker logs -f <id> > file`.
   Trainyard: `LogPump` over `DockerRunner.open_logs` into a `JobLogWriter` rotating at 10 MiB.
   Both containers are the agent's own (`product_container`: `container_spec` of the job), the
   engine's json-file capped at 4 x `--mb` so it never rotates. Timed from the container's
   start until every line is in the file, ABBA order per round. Every line of every copy is checked
   to be 1..N in order (lost, duplicated, malformed); a run that lost lines is left out of the
   means. CPU: the agent's is this process's `process_time()` (only the capture runs in it), the
   docker CLI's from `RUSAGE_CHILDREN`, dockerd's from `/proc` (the whole engine).
2. Tail latency on a ~1 GiB job log (100 MiB files, warm page cache): `tail(path, 100)` and
   `tail(path, 10000)`, medians.
3. Per-line costs: a metrics recogniser (`startswith(b"{")`, `json.loads`, numeric fields kept) over
   1M lines, 10% JSON; `Dechunker.feed` and `FrameParser.feed` over the same lines as Docker frames
   (one HTTP chunk each, 1 MiB reads); `JobLogWriter.container_lines` with the parser's batches.

Figures only, no assertions on time. Containers are labelled
`trainyard.agent=bench-logcapture-<run>-capture`, removed in `finally` and checked for at the end
(bench.harness); the temporary directory is deleted.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import struct
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.config import Settings
from agent.core.jobs import JobSpec, Resources
from agent.core.loglines import RawLine
from agent.joblog import JobLogWriter, rotated_files, tail
from agent.runtime.logframes import Dechunker, FrameParser
from agent.worker.logpump import LogPump
from bench.harness import (
    MIB,
    Bench,
    abba,
    checkpoint,
    dockerd_cpu,
    dockerd_since,
    product_container,
    ratios,
    say,
)

PREFIX = 15  # "line 000000001 " before the padding
TEXT_AT = 38  # a job log line: 30-byte timestamp, " stdout ", text


@dataclass(frozen=True)
class Capture:
    kind: str
    seconds: float
    mib: float
    cpu: float  # the capturer's CPU seconds: docker CLI (baseline) or this process (trainyard)
    dockerd_cpu: float  # NaN when dockerd restarted (or cannot be read) during the run
    lost: int
    dup: int
    bad: int

    @property
    def rate(self) -> float:
        return self.mib / self.seconds


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def create(bench: Bench, args: argparse.Namespace, n: int) -> str:
    """The agent's container for a job printing n numbered lines (engine log: never rotated)."""
    settings = Settings(
        agent_id=bench.agent_id("capture"),
        data_dir=bench.tmp / "data",
        pids_limit=64,
        engine_log_max_size=f"{4 * args.mb}m",
    )
    pad = "x" * (args.line_bytes - PREFIX - 1)
    command = ["sh", "-c", f"seq -f 'line %09.0f {pad}' 1 {n}"]
    spec = JobSpec(command=command, resources=Resources(memory="256m", cpus=1.0), max_retries=0)
    job_id = f"{settings.agent_id}-{uuid.uuid4().hex[:8]}"
    return bench.runner.create(product_container(settings, spec, job_id))


def read_lines(files: Iterable[Path], text_at: int) -> Iterator[bytes]:
    for path in files:
        with path.open("rb") as fh:
            for line in fh:
                yield line[text_at:-1] if text_at == 0 or line[30:38] == b" stdout " else line


def check(texts: Iterable[bytes], n: int, line_bytes: int) -> tuple[int, int, int]:
    """(lost, duplicated, malformed) stdout lines against 1..n in order."""
    expected, lost, dup, bad = 1, 0, 0, 0
    for text in texts:
        if len(text) != line_bytes - 1 or not text.startswith(b"line "):
            bad += 1
            continue
        number = int(text[5:14])
        if number == expected:
            expected += 1
        elif number < expected:
            dup += 1
        else:
            lost += number - expected
            expected = number + 1
    return lost + n + 1 - expected, dup, bad


def baseline(bench: Bench, args: argparse.Namespace, n: int) -> Capture:
    runner, cid = bench.runner, create(bench, args, n)
    out = bench.tmp / "baseline.log"
    try:
        cpu0, engine0, t0 = children_cpu(), dockerd_cpu(), time.perf_counter()
        runner.start(cid)
        with out.open("wb") as fh:
            subprocess.run(["docker", "logs", "-f", cid], stdout=fh, check=True)
        seconds = time.perf_counter() - t0
        cpu, engine = children_cpu() - cpu0, dockerd_since(engine0)
    finally:
        runner.remove(cid)
    lost, dup, bad = check(read_lines([out], 0), n, args.line_bytes)
    out.unlink()
    return Capture("baseline", seconds, n * args.line_bytes / MIB, cpu, engine, lost, dup, bad)


def trainyard(bench: Bench, args: argparse.Namespace, n: int) -> Capture:
    runner, cid = bench.runner, create(bench, args, n)
    path = bench.tmp / "job" / "job.log"
    writer = JobLogWriter(path, max_bytes=10 * MIB, backup_count=1000)
    pump = LogPump(lambda c, s: runner.open_logs(c, since=s), cid, writer, since=None, attempt=1)
    try:
        cpu0, engine0, t0 = time.process_time(), dockerd_cpu(), time.perf_counter()
        # The agent's order (agent/worker/execution.py). A follow stream opened before the
        # container runs ends at once, empty, and the pump calls that complete if the
        # container exits within 2 s (seen: 0 lines, no warning).
        runner.start(cid)
        pump.start()
        runner.wait(cid)
        report = pump.finish()
        seconds = time.perf_counter() - t0
        cpu, engine = time.process_time() - cpu0, dockerd_since(engine0)
    finally:
        pump.abandon()  # a no-op after finish(); stops the thread on an error
        runner.remove(cid)
        writer.close()
    if not report.complete:
        say(f"    pump reported an incomplete log: {report.detail}")
    lost, dup, bad = check(read_lines(rotated_files(path), TEXT_AT), n, args.line_bytes)
    shutil.rmtree(path.parent)
    return Capture("trainyard", seconds, n * args.line_bytes / MIB, cpu, engine, lost, dup, bad)


def mean_rate(runs: Iterable[Capture], kind: str) -> float:
    """Mean MiB/s of the complete runs of a kind (a run that lost lines ended early)."""
    rates = [g.rate for g in runs if g.kind == kind and g.lost == 0]
    return statistics.mean(rates) if rates else float("nan")


def capture_rate(bench: Bench, args: argparse.Namespace) -> None:
    n = args.mb * MIB // args.line_bytes
    say(f"1. capture rate: {n} lines of {args.line_bytes} B ({n * args.line_bytes / MIB:.1f} MiB)")
    rounds: list[list[Capture]] = []
    for number in range(1, args.rounds + 1):
        rounds.append([])
        for run in (*abba(0, baseline, trainyard), *abba(1, baseline, trainyard)):
            checkpoint()
            got = run(bench, args, n)
            rounds[-1].append(got)
            who = "CLI" if got.kind == "baseline" else "agent"
            say(
                f"  round {number} {got.kind:9}: {got.seconds:6.2f} s {got.rate:6.1f} MiB/s  "
                f"{who} CPU {got.cpu / got.mib:.4f} s/MiB  dockerd CPU "
                f"{got.dockerd_cpu / got.mib:.4f} s/MiB  lost {got.lost} dup {got.dup} "
                f"bad {got.bad}{'  INCOMPLETE: not in the means' if got.lost else ''}"
            )
    flat = [got for row in rounds for got in row]
    for kind in ("baseline", "trainyard"):
        mine = [got for got in flat if got.kind == kind]
        say(
            f"  {kind:9} mean {mean_rate(mine, kind):6.1f} MiB/s over "
            f"{sum(g.lost == 0 for g in mine)}/{len(mine)} complete runs; capturer CPU "
            f"{statistics.mean(g.cpu / g.mib for g in mine):.4f} s/MiB, dockerd CPU "
            f"{statistics.mean(g.dockerd_cpu / g.mib for g in mine):.4f} s/MiB; lost "
            f"{sum(g.lost for g in mine)} lines in {sum(g.lost > 0 for g in mine)} runs, dup "
            f"{sum(g.dup for g in mine)}, bad {sum(g.bad for g in mine)}"
        )
    per_round = ratios(mean_rate(row, "trainyard") / mean_rate(row, "baseline") for row in rounds)
    overall = mean_rate(flat, "trainyard") / mean_rate(flat, "baseline")
    say(f"  ratio trainyard/baseline (MiB/s, goal >= 0.9): {overall:.2f} (rounds: {per_round})")


def timed(fn: Callable[..., object], *fn_args: object) -> float:
    t0 = time.perf_counter()
    fn(*fn_args)
    return time.perf_counter() - t0


def tail_latency(tmp: Path, total: int = 1 << 30) -> None:
    path = tmp / "tail" / "job.log"
    texts = [f"step {i:07d} loss 0.{i % 997:03d} ".encode() + b"y" * 70 for i in range(10_000)]
    t0 = time.perf_counter()
    with JobLogWriter(path, max_bytes=100 * MIB, backup_count=20) as writer:
        second = 0
        while writer.bytes_written < total:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_795_000_000 + second))
            ts = f"{stamp}.000000000Z".encode()
            writer.container_lines([("stdout", ts, text) for text in texts])
            second += 1
    files = rotated_files(path)
    size = sum(f.stat().st_size for f in files) / MIB
    built = time.perf_counter() - t0
    say(f"2. tail: {size:.0f} MiB in {len(files)} files (written in {built:.1f} s)")
    for n, calls in ((100, 50), (10_000, 20)):
        got = len(tail(path, n))  # and warms the cache
        times = [timed(tail, path, n) for _ in range(calls)]
        say(
            f"  tail(path, {n}): median {statistics.median(times) * 1e3:.2f} ms, "
            f"max {max(times) * 1e3:.2f} ms over {calls} calls ({got} lines)"
        )
    shutil.rmtree(path.parent)


def recognise(texts: Iterable[bytes]) -> int:
    """The cheap metrics recogniser: JSON-object lines, numeric fields kept."""
    found = 0
    for text in texts:
        if text.startswith(b"{"):
            try:
                obj = json.loads(text)
            except ValueError:
                continue
            if isinstance(obj, dict):  # keep numeric fields (type() leaves bools out)
                found += bool({k: v for k, v in obj.items() if type(v) in (int, float)})
    return found


def per_line_costs(tmp: Path, lines: int = 1_000_000) -> None:
    plain = b"Epoch 2/5: 900/1875 [=======>........] - ETA: 41s - data loader waits on worker 3"
    metric = '{{"epoch": 2, "epochs": 5, "step": {}, "loss": 0.{:02d}, "accuracy": 0.88}}'
    texts = [metric.format(i, i % 97).encode() if i % 10 == 0 else plain for i in range(lines)]
    say(f"3. per-line costs over {lines} lines ({lines // 10} JSON objects, the rest plain)")
    mixed = timed(recognise, texts)
    only_json = timed(recognise, texts[::10])
    only_plain = timed(recognise, [t for t in texts if t is plain])
    say(
        f"  metrics recogniser: {mixed / lines * 1e6:.3f} µs/line mixed, "
        f"{only_json / (lines // 10) * 1e6:.3f} µs per JSON line, "
        f"{only_plain / (lines - lines // 10) * 1e6:.3f} µs per plain line"
    )
    payloads = (b"2026-11-25T10:00:00.%09dZ %s\n" % (i, text) for i, text in enumerate(texts))
    frames = (struct.pack(">BxxxL", 1, len(p)) + p for p in payloads)
    buf = b"".join(b"%x\r\n%s\r\n" % (len(f), f) for f in frames) + b"0\r\n\r\n"  # chunk/frame
    del texts
    reads = [buf[i : i + MIB] for i in range(0, len(buf), MIB)]
    del buf
    dechunker = Dechunker()
    t0 = time.perf_counter()
    decoded = [dechunker.feed(read) for read in reads]
    dechunk = time.perf_counter() - t0
    parser = FrameParser()
    t0 = time.perf_counter()
    batches: list[list[RawLine]] = [parser.feed(data) for data in decoded]
    parse = time.perf_counter() - t0
    parsed = sum(len(b) for b in batches)
    del reads, decoded
    with JobLogWriter(tmp / "writer" / "job.log", max_bytes=10 * MIB, backup_count=1000) as w:

        def write_all() -> None:
            for batch in batches:
                w.container_lines(batch)

        write = timed(write_all)
    shutil.rmtree(tmp / "writer")
    say(f"  Dechunker.feed: {dechunk / lines * 1e6:.3f} µs/line (1 MiB reads)")
    say(f"  FrameParser.feed: {parse / lines * 1e6:.3f} µs/line ({parsed} lines parsed)")
    say(
        f"  JobLogWriter.container_lines: {write / lines * 1e6:.3f} µs/line "
        f"(batches of ~{parsed // max(len(batches), 1)}, rotating at 10 MiB)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="MiB each container prints (200)")
    parser.add_argument("--line-bytes", type=int, default=100, help="bytes per line, with \\n")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds (2)")
    args = parser.parse_args(argv)
    if args.line_bytes < PREFIX + 1 or args.mb * MIB // args.line_bytes >= 10**9:
        parser.error(f"--line-bytes must be at least {PREFIX + 1} and the lines fewer than 1e9")

    bench = Bench("logcapture")

    def body() -> int:
        capture_rate(bench, args)
        checkpoint()
        tail_latency(bench.tmp)
        checkpoint()
        per_line_costs(bench.tmp)
        return 0

    return bench.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
