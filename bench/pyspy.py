"""py-spy profiles of a running process: record one, and read it as top functions by own and
total time. The reading is pure (a speedscope document in, rows out) and unit-tested."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SITE = re.compile(r".*/(?:site|dist)-packages/")
OWN_CODE = re.compile(r"\((?:agent|api|cli)/[^)]*\)$")


def py_spy() -> str | None:
    """The py-spy next to this Python (the venv's, from the dev extra), or one on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def start_recording(
    pid: int, speedscope: Path, *, rate: int, log: Path, gil: bool = False
) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` until SIGINT (`stop_recording`), into a speedscope file. With
    `gil`, only the thread holding the GIL is sampled: where the interpreter's one core goes."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy (the dev extra)")
    # --subprocesses: an API with TRAINYARD_API_WORKERS serves from its worker processes.
    args = ["record", "--pid", str(pid), "--subprocesses", "--rate", str(rate)]
    args += ["--format", "speedscope"]
    args += ["--gil"] if gil else []
    with log.open("ab") as out:
        return subprocess.Popen(
            [exe, *args, "--output", str(speedscope)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_recording(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def short_file(path: str) -> str:
    """site-packages/x/y.py -> x/y.py; a repository file relative to the repository."""
    path = SITE.sub("", path)
    root = str(Path(__file__).resolve().parent.parent) + "/"
    return path.removeprefix(root)


@dataclass(frozen=True)
class Row:
    function: str  # "name (file)"
    own: float  # share of all samples with this function on top
    total: float  # share of all samples with this function anywhere on the stack


def stacks(document: dict[str, Any]) -> Iterable[tuple[list[str], float]]:
    """(frames root first as 'name (file)', weight) of every sample of every thread."""
    frames = document["shared"]["frames"]
    names = [f"{f.get('name', '?')} ({short_file(str(f.get('file', '?')))})" for f in frames]
    for profile in document.get("profiles", []):
        if profile.get("type") != "sampled":
            continue
        weights = profile.get("weights") or [1.0] * len(profile["samples"])
        for sample, weight in zip(profile["samples"], weights, strict=False):
            yield [names[i] for i in sample], float(weight)


def idle(frames: list[str]) -> bool:
    """A thread waiting for work, not for anything a request needs: an idle AnyIO worker
    (`WorkerThread.run` -> `Queue.get`) or the event loop in `select`."""
    names = [f.split(" (", 1)[0] for f in frames]
    if names and names[-1].endswith(".select"):
        return True
    for i, name in enumerate(names[:-1]):
        if name == "WorkerThread.run" and names[i + 1] == "Queue.get":
            return True
    return False


def busy_stacks(document: dict[str, Any]) -> tuple[list[tuple[list[str], float]], float]:
    """The samples that are not `idle`, and the weight of those that are."""
    busy, idle_weight = [], 0.0
    for frames, weight in stacks(document):
        if idle(frames):
            idle_weight += weight
        else:
            busy.append((frames, weight))
    return busy, idle_weight


def top_functions(document: dict[str, Any], limit: int = 25) -> tuple[float, list[Row], list[Row]]:
    """(sampled seconds, top by own time, top by total time); shares are of all samples (0..1)
    that are not `idle`. Functions are merged over line numbers; a recursive function counts
    once per sample."""
    own: defaultdict[str, float] = defaultdict(float)
    total: defaultdict[str, float] = defaultdict(float)
    samples = 0.0
    for frames, weight in busy_stacks(document)[0]:
        samples += weight
        if frames:
            own[frames[-1]] += weight
        for name in set(frames):
            total[name] += weight
    if not samples:
        return 0.0, [], []

    def rows(by: dict[str, float]) -> list[Row]:
        names = sorted(by, key=lambda n: (-by[n], n))[:limit]
        return [Row(n, own[n] / samples, total[n] / samples) for n in names]

    return samples, rows(own), rows(total)


def folded(document: dict[str, Any]) -> list[str]:
    """Collapsed stacks ('a;b;c count'), the input of flamegraph.pl and speedscope alike."""
    counts: defaultdict[str, float] = defaultdict(float)
    for frames, weight in stacks(document):
        counts[";".join(frames)] += weight
    return [f"{stack} {counts[stack]:g}" for stack in sorted(counts, key=lambda k: -counts[k])]


def sites(document: dict[str, Any], limit: int = 15) -> list[tuple[float, str]]:
    """(share, 'leaf <- nearest Trainyard function') of the busy samples, largest first: where
    the time is spent or waited, seen from the product's code."""
    busy, _ = busy_stacks(document)
    weights: defaultdict[str, float] = defaultdict(float)
    total = 0.0
    for frames, weight in busy:
        total += weight
        ours = [f for f in frames[:-1] if OWN_CODE.search(f)]
        leaf = frames[-1] if frames else "?"
        weights[f"{leaf} <- {ours[-1] if ours else '(no Trainyard frame)'}"] += weight
    ranked = sorted(weights, key=lambda k: -weights[k])[:limit]
    return [(weights[k] / total, k) for k in ranked] if total else []


def report(speedscope: Path, limit: int = 25) -> str:
    """The text summary of a speedscope file: top functions by own and by total time."""
    document = json.loads(speedscope.read_text())
    samples, by_own, by_total = top_functions(document, limit)
    _, idle_weight = busy_stacks(document)
    lines = [
        f"{samples:.2f} thread-seconds sampled (and {idle_weight:.2f} s of idle threads left out:"
        " AnyIO workers waiting for work, the event loop in select)",
        "",
        "by own time:",
    ]
    lines += [f"  {r.own:6.1%} own  {r.total:6.1%} total  {r.function}" for r in by_own]
    lines += ["", "by total time (own + callees):"]
    lines += [f"  {r.total:6.1%} total  {r.own:6.1%} own  {r.function}" for r in by_total]
    _, _, everything = top_functions(document, limit=10**6)
    ours = [r for r in everything if OWN_CODE.search(r.function)][:limit]
    lines += ["", "Trainyard's own functions by total time:"]
    lines += [f"  {r.total:6.1%} total  {r.own:6.1%} own  {r.function}" for r in ours]
    lines += ["", "where the time goes, by leaf and the nearest Trainyard function:"]
    lines += [f"  {share:6.1%}  {site}" for share, site in sites(document)]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m bench.pyspy FILE.speedscope.json ...: the summaries again
    for name in sys.argv[1:]:
        print(f"== {name}\n{report(Path(name))}\n")
