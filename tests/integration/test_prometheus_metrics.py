"""GET /metrics after real jobs on the real engine, on SQLite and on PostgreSQL: every series
the README lists is there with the value the jobs imply, and `promtool check metrics` (the
Prometheus project's own linter) accepts the scrape.

Counters and histograms are process-local and this test process runs many services one after
the other, so they are checked as differences; the database gauges are absolute."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import Settings
from agent.core.jobs import JobSpec, JobStatus
from agent.db.engine import Database
from agent.db.queue import JobQueue
from agent.joblog import job_log_path
from agent.metrics_collector import GPU_METRICS, GpuMetrics, SharedRead, load_nvml
from agent.service import TrainyardService
from agent.wiring import System
from tests.conftest import Harness

MIB = 1024 * 1024
THREADS = 8
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# Prints its progress (epoch 1 of 4), then trains "forever": it runs until cancelled.
PROGRESS_THEN_WAIT = [
    "python3",
    "-c",
    "import json, time; print(json.dumps({'epoch': 1, 'epochs': 4, 'loss': 0.9}), flush=True); "
    "time.sleep(120)",
]
FAILS = ["sh", "-c", "echo failing >&2; exit 3"]
SUCCEEDS = ["sh", "-c", "echo done"]


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 for a labelled counter child that was never touched."""
    return found.get((name, frozenset(labels.items())), 0.0)


def names(found: Samples) -> set[str]:
    return {name for name, _ in found}


def scrape(harness: Harness) -> str:
    response = harness.client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: run scripts/ensure-prometheus.sh (make test does)")
    done = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, f"promtool check metrics: {done.stdout}{done.stderr}"


@pytest.mark.docker
def test_every_series_after_real_jobs(
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    database_url: str,
) -> None:
    # One slot: the first job holds it while two more wait, so every status has a count.
    h = start_harness(
        make_settings(
            database_url=database_url, max_concurrent_jobs=1, gpus="0,1", heartbeat_seconds=0.5
        )
    )
    before = samples(scrape(h))

    hold = h.submit({"command": PROGRESS_THEN_WAIT, "resources": {"gpus": 1}})
    h.wait_for(hold["id"], lambda j: j["status"] == "running" and j["progress"] is not None)
    failing = h.submit({"command": FAILS, "max_retries": 1})
    succeeding = h.submit({"command": SUCCEEDS})
    time.sleep(0.3)  # some queue wait to see

    busy_text = scrape(h)
    promtool_check(busy_text)
    busy = samples(busy_text)
    agent = h.agent_id
    assert value(busy, "trainyard_queue_depth", status="queued") == 2
    assert value(busy, "trainyard_queue_depth", status="running") == 1
    assert value(busy, "trainyard_queue_depth", status="starting") == 0
    assert value(busy, "trainyard_queue_oldest_wait_seconds") >= 0.3
    assert value(busy, "trainyard_job_progress", job_id=hold["id"]) == 0.25
    assert value(busy, "trainyard_running_attempts") == 1
    assert value(busy, "trainyard_agent_up", agent=agent) == 1
    assert value(busy, "trainyard_agent_slots", agent=agent) == 1
    assert value(busy, "trainyard_agent_attempts_held", agent=agent) == 1
    assert value(busy, "trainyard_agent_gpus", agent=agent) == 2
    assert value(busy, "trainyard_agent_gpus_held", agent=agent) == 1
    assert value(busy, "trainyard_agent_memory_held_bytes", agent=agent) == 256 * MIB
    assert value(busy, "trainyard_agent_memory_bytes", agent=agent) > 256 * MIB
    assert value(busy, "trainyard_agent_cpus_held", agent=agent) == 0.5
    assert value(busy, "trainyard_agent_cpus", agent=agent) >= 1
    assert value(busy, "trainyard_database_up") == 1
    heartbeat = value(busy, "trainyard_agent_last_heartbeat_timestamp_seconds", agent=agent)
    assert abs(time.time() - heartbeat) < 10

    h.client.post(f"/jobs/{hold['id']}/cancel")
    done = [h.wait_final(job["id"]) for job in (hold, failing, succeeding)]
    assert [j["status"] for j in done] == ["cancelled", "failed", "succeeded"], done
    assert len(done[1]["attempts"]) == 2  # it was retried once
    h.wait_no_containers()
    deadline = time.monotonic() + 15  # the attempts' threads end right after the containers
    while value(samples(scrape(h)), "trainyard_running_attempts") != 0:
        assert time.monotonic() < deadline, "attempts still running after their jobs ended"
        time.sleep(0.05)
    after_text = scrape(h)
    promtool_check(after_text)
    after = samples(after_text)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("trainyard_jobs_submitted_total") == 3
    assert grew("trainyard_attempts_finished_total", outcome="cancelled") == 1
    assert grew("trainyard_attempts_finished_total", outcome="user_error") == 2
    assert grew("trainyard_attempts_finished_total", outcome="succeeded") == 1
    assert grew("trainyard_retries_total", outcome="user_error") == 1
    assert grew("trainyard_retries_total", outcome="cancelled") == 0
    # Every claim: a job's first from its submit, a retry's from the end of its backoff.
    assert grew("trainyard_queue_wait_seconds_count") == 4
    assert grew("trainyard_queue_wait_seconds_sum") >= 0.3
    assert grew("trainyard_claim_to_start_seconds_count") == 4  # every attempt started
    assert grew("trainyard_attempt_duration_seconds_count") == 4
    assert grew("trainyard_agent_heartbeats_total") >= 1
    logs = sum(job_log_path(h.system.settings.log_dir, job["id"]).stat().st_size for job in done)
    assert grew("trainyard_log_bytes_written_total") == logs  # every byte of the three logs

    assert value(after, "trainyard_jobs_finished", status="succeeded", outcome="succeeded") == 1
    assert value(after, "trainyard_jobs_finished", status="failed", outcome="user_error") == 1
    assert value(after, "trainyard_jobs_finished", status="cancelled", outcome="cancelled") == 1
    for status in ("queued", "starting", "running"):
        assert value(after, "trainyard_queue_depth", status=status) == 0
    assert value(after, "trainyard_queue_oldest_wait_seconds") == 0
    assert value(after, "trainyard_agent_attempts_held", agent=agent) == 0
    assert value(after, "trainyard_agent_gpus_held", agent=agent) == 0
    assert ("trainyard_job_progress", frozenset({("job_id", hold["id"])})) not in after

    # No NVML on this host: no GPU series at all, rather than zeros that look real.
    assert not GPU_METRICS.available
    assert not any(n.startswith(("trainyard_gpu_", "trainyard_attempt_gpu")) for n in names(after))


def test_every_api_process_reads_the_same_database_gauges(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Two services on one database, neither with an agent: both see the queue that the
    first filled, at scrape time (no gauge that only the submitting process would know)."""
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'shared.db'}")
    first, second = (System.build(settings, with_agent=False) for _ in range(2))
    try:
        jobs = [first.service.submit(JobSpec(name="queued", command=["true"])) for _ in range(3)]
        first.service.cancel(jobs[0].id)
        for system in (first, second):
            found = samples(system.service.metrics_exposition().decode())
            assert value(found, "trainyard_queue_depth", status=JobStatus.QUEUED.value) == 2
            assert value(found, "trainyard_jobs_finished", status="cancelled", outcome="cancelled")
    finally:
        first.close()
        second.close()


def test_a_scrape_without_the_database_still_answers(
    make_settings: Callable[..., Settings],
) -> None:
    """The process's own metrics are served, and trainyard_database_up says the rest is
    missing (a refused connection on a closed local port)."""
    settings = make_settings()
    db = Database("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2")
    try:
        service = TrainyardService(settings, db, JobQueue(db))
        text = service.metrics_exposition().decode()
    finally:
        db.dispose()
    found = samples(text)
    assert value(found, "trainyard_database_up") == 0
    assert "trainyard_jobs_submitted_total" in names(found)
    assert not any(n.startswith("trainyard_queue_depth") for n in names(found))
    promtool_check(text)


def test_concurrent_scrapes_share_one_database_read() -> None:
    """A flood of scrapes (no token needed) costs one read at a time: who arrives while a
    read is under way gets its result; a failure reaches every waiter, and the next scrape
    reads again."""
    arrived = threading.Semaphore(0)
    calls: list[int] = []

    def slow_read() -> Any:
        calls.append(1)
        for _ in range(THREADS - 1):  # everyone else is at the door …
            assert arrived.acquire(timeout=30)
        time.sleep(0.3)  # … and through it, waiting on this read
        if len(calls) == 1:
            raise RuntimeError("database gone")
        return "gauges"

    shared = SharedRead(slow_read)
    results: list[object] = []

    def scrape_once() -> None:
        arrived.release()
        try:
            results.append(shared())
        except RuntimeError as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=scrape_once) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(calls) == 1
    assert results == ["database gone"] * THREADS
    for _ in range(THREADS - 1):
        arrived.release()
    assert shared() == "gauges" and len(calls) == 2


def test_without_nvml_nothing_is_registered() -> None:
    """This host has no NVIDIA driver: NVML does not load, and a GPU view registers nothing."""
    assert load_nvml() is None
    registry = CollectorRegistry()
    gpus = GpuMetrics()
    assert gpus.start(registry, sampler=False) is False
    gpus.track(("job", 1), ["0"])
    assert gpus.finish(("job", 1)) is None
    assert generate_latest(registry) == b""


def test_gpu_series_from_nvml_answers() -> None:
    """The series NVML's answers become, with NVML stood in for by a fake module (the only
    way to run this part on a host without GPUs): one device that reports everything, one
    that does not support utilisation; the peak follows the tracked attempt's GPU."""
    fake = _FakeNvml()
    registry = CollectorRegistry()
    gpus = GpuMetrics(load=lambda: fake)
    assert gpus.start(registry, sampler=False)
    gpus.track(("job", 1), ["1"])
    fake.used[1] = 3 * 2**30
    gpus.sample()
    fake.used[1] = 2**30
    assert gpus.finish(("job", 1)) == 3 * 2**30
    text = generate_latest(registry).decode()
    promtool_check(text)
    found = samples(text)
    assert value(found, "trainyard_gpu_utilization_ratio", gpu="0", uuid="GPU-0") == 0.42
    assert (
        "trainyard_gpu_utilization_ratio",
        frozenset({("gpu", "1"), ("uuid", "GPU-1")}),
    ) not in found
    assert value(found, "trainyard_gpu_memory_used_bytes", gpu="1", uuid="GPU-1") == 2**30
    assert value(found, "trainyard_gpu_memory_total_bytes", gpu="0", uuid="GPU-0") == 80 * 2**30
    assert value(found, "trainyard_gpu_temperature_celsius", gpu="0", uuid="GPU-0") == 61
    assert value(found, "trainyard_attempt_gpu_memory_peak_bytes_count") == 1
    assert value(found, "trainyard_attempt_gpu_memory_peak_bytes_sum") == 3 * 2**30


class _FakeNvml(SimpleNamespace):
    NVML_TEMPERATURE_GPU = 0

    def __init__(self) -> None:
        super().__init__()
        self.used = {0: 5 * 2**30, 1: 0}

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return f"GPU-{handle}".encode()

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        if handle == 1:
            raise RuntimeError("NVMLError_NotSupported")
        return SimpleNamespace(gpu=42, memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(used=self.used[handle], total=80 * 2**30)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return 61
