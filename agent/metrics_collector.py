"""Metrics computed when Prometheus scrapes: what the database knows, and what NVML says.

`DatabaseCollector` turns one `read()` of the database (agent/db/gauges.py, passed in as a
callable: no SQL here) into gauges: jobs by status, finished jobs by outcome, the oldest due
queued job's wait, and per agent its capacity, what it holds and its last heartbeat. Read at
scrape time, they are right in every process that serves /metrics, however many there are.
Each service has its own (`database_registry`): tests run several in one process.

`GPU_METRICS` reports each GPU's utilisation, memory and temperature, and the peak GPU memory
of each attempt that held GPUs, where NVML answers (`nvidia-ml-py` and an NVIDIA driver). Where
it does not, it registers nothing: no GPU series at all rather than zeros that look real.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from datetime import datetime, timedelta
from types import ModuleType
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.core.admission import live_agents
from agent.core.jobs import FINAL_STATUSES, JobStatus
from agent.core.records import AgentInfo
from agent.metrics import REGISTRY

log = logging.getLogger("trainyard.metrics")

ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.STARTING, JobStatus.RUNNING)
AGENT_SHOWN_FOR = timedelta(days=1)
"""An agent that is gone (stopped, or silent) and holds nothing leaves the series after this:
agent ids that come and go must not grow the series without bound."""
GPU_SAMPLE_SECONDS = 2.0
GIB = 2**30


class DatabaseGauges(Protocol):
    """What one read of the database gives (agent/db/gauges.py has the SQL)."""

    @property
    def jobs(self) -> dict[tuple[str, str | None], int]: ...  # (status, outcome) -> jobs

    @property
    def oldest_due_since(self) -> datetime | None: ...

    @property
    def agents(self) -> list[AgentInfo]: ...

    @property
    def read_at(self) -> datetime: ...


EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What `exposition` writes: the classic text format every Prometheus reads (newer clients
label it version=1.0.0, which only adds escaping for UTF-8 names; ours are plain)."""


def exposition(*registries: CollectorRegistry) -> bytes:
    """The text format of this process's metrics (REGISTRY) followed by `registries`."""
    return b"".join(generate_latest(r) for r in (REGISTRY, *registries))


def database_registry(
    read: Callable[[], DatabaseGauges], *, heartbeat_seconds: float
) -> CollectorRegistry:
    """A registry holding one DatabaseCollector (render it with `exposition`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(read, heartbeat_seconds=heartbeat_seconds))
    return registry


class SharedRead:
    """`read()` for many threads at once: a caller that arrives while a read is under way
    waits for that read's result instead of starting its own. /metrics needs no token, so a
    flood of scrapes costs one database read at a time, not one per request."""

    def __init__(self, read: Callable[[], DatabaseGauges]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._current: Future[DatabaseGauges] | None = None

    def __call__(self) -> DatabaseGauges:
        with self._lock:
            current, leader = self._current, self._current is None
            if current is None:
                current = self._current = Future()
        if leader:
            try:
                current.set_result(self._read())
            except BaseException as exc:
                current.set_exception(exc)
            finally:
                with self._lock:
                    self._current = None
        return current.result()


class DatabaseCollector(Collector):
    def __init__(self, read: Callable[[], DatabaseGauges], *, heartbeat_seconds: float) -> None:
        self._read = SharedRead(read)
        self._heartbeat_seconds = heartbeat_seconds
        self._failing = False

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            gauges = self._read()
        except Exception as exc:  # the process's own metrics are still worth a scrape
            if not self._failing:
                log.warning("metrics: the database gauges could not be read: %s", exc)
            self._failing = True
            yield _gauge("trainyard_database_up", "1 when the last scrape read the database.", 0)
            return
        self._failing = False
        yield _gauge("trainyard_database_up", "1 when the last scrape read the database.", 1)
        yield _gauge(
            "trainyard_database_read_seconds",
            "Seconds this scrape spent reading the database gauges (or waiting for the read "
            "a concurrent scrape had under way).",
            time.perf_counter() - started,
        )
        yield from _job_families(gauges)
        yield from self._agent_families(gauges.agents, gauges.read_at)

    def _agent_families(self, agents: Sequence[AgentInfo], now: datetime) -> Iterator[Metric]:
        live = {
            a.id for a in live_agents(agents, now=now, heartbeat_seconds=self._heartbeat_seconds)
        }
        shown = [a for a in agents if a.id in live or _holds(a) or _recent(a, now)]
        per_agent: list[tuple[str, str, Callable[[AgentInfo], float]]] = [
            (
                "trainyard_agent_up",
                "1 while the agent heartbeats (as GET /agents 'alive'), 0 once it stopped "
                "or went silent.",
                lambda a: float(a.id in live),
            ),
            (
                "trainyard_agent_last_heartbeat_timestamp_seconds",
                "Unix time of the agent's last heartbeat.",
                lambda a: a.heartbeat_at.timestamp(),
            ),
            ("trainyard_agent_slots", "Attempts the agent runs at once.", lambda a: a.slots),
            (
                "trainyard_agent_attempts_held",
                "Attempts holding the agent's resources (running, or whose container is "
                "not yet confirmed gone).",
                lambda a: a.running,
            ),
            ("trainyard_agent_gpus", "GPUs the agent offers.", lambda a: len(a.gpu_ids)),
            (
                "trainyard_agent_gpus_held",
                "The agent's GPUs held by jobs.",
                lambda a: len(a.gpu_holders),
            ),
            (
                "trainyard_agent_memory_bytes",
                "Memory the agent offers to jobs.",
                lambda a: a.memory_bytes,
            ),
            (
                "trainyard_agent_memory_held_bytes",
                "Memory limits of the jobs holding the agent's resources.",
                lambda a: a.held_memory_bytes,
            ),
            ("trainyard_agent_cpus", "CPUs the agent offers to jobs.", lambda a: a.cpus),
            (
                "trainyard_agent_cpus_held",
                "CPU limits of the jobs holding the agent's resources.",
                lambda a: a.held_cpus,
            ),
        ]
        for name, help_text, value in per_agent:
            family = GaugeMetricFamily(name, help_text, labels=["agent"])
            for agent in shown:
                family.add_metric([agent.id], float(value(agent)))
            yield family


def _job_families(gauges: DatabaseGauges) -> Iterator[Metric]:
    depth = GaugeMetricFamily(
        "trainyard_queue_depth",
        "Jobs in the database that are not final, by status (queued includes retries waiting "
        "for their not_before).",
        labels=["status"],
    )
    by_status = {status: 0 for status in ACTIVE_STATUSES}
    finished = GaugeMetricFamily(
        "trainyard_jobs_finished",
        "Jobs in the database in a final state, by status and the outcome of their last "
        "attempt (deleting a job takes it out).",
        labels=["status", "outcome"],
    )
    for (status, outcome), count in sorted(gauges.jobs.items(), key=str):
        if status in by_status:
            by_status[JobStatus(status)] += count
        elif status in FINAL_STATUSES:
            finished.add_metric([status, outcome or "none"], count)
    for status, count in by_status.items():
        depth.add_metric([status.value], count)
    yield depth
    yield finished
    since = gauges.oldest_due_since
    yield _gauge(
        "trainyard_queue_oldest_wait_seconds",
        "How long the longest-waiting queued job that could be claimed now has waited (since "
        "its submit or its retry's not_before); 0 when there is none.",
        max(0.0, (gauges.read_at - since).total_seconds()) if since is not None else 0.0,
    )


def _holds(agent: AgentInfo) -> bool:
    return agent.running > 0 or bool(agent.gpu_holders)


def _recent(agent: AgentInfo, now: datetime) -> bool:
    return now - agent.heartbeat_at < AGENT_SHOWN_FOR


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


# --- GPUs, through NVML ------------------------------------------------------------------------


def load_nvml() -> ModuleType | None:
    """pynvml, initialised; None where there is no NVML (no package, no driver, no GPU)."""
    try:
        nvml = importlib.import_module("pynvml")
        nvml.nvmlInit()
    except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded, …
        log.info("no GPU metrics: NVML is not available here (%s)", exc)
        return None
    return nvml


class GpuMetrics(Collector):
    """Per-GPU series and per-attempt peak GPU memory. `start()` once NVML is wanted (the
    agent does it); before that, or without NVML, every method is a cheap no-op."""

    def __init__(self, load: Callable[[], ModuleType | None] = load_nvml) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._nvml: ModuleType | None = None
        self._started = False
        self._tracked: dict[Any, tuple[tuple[str, ...], int]] = {}  # key -> (gpu ids, peak)
        self.peaks = Histogram(
            "trainyard_attempt_gpu_memory_peak_bytes",
            "Per attempt that held GPUs: the most memory any one of its GPUs had in use "
            "(sampled every 2 s while it ran; NVML hosts only).",
            buckets=tuple(g * GIB for g in (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 64, 80, 96, 141)),
            registry=None,
        )

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def start(self, registry: CollectorRegistry = REGISTRY, *, sampler: bool = True) -> bool:
        """Open NVML once per process; register the series only if it answers. `sampler`
        samples tracked attempts' GPU memory every GPU_SAMPLE_SECONDS in a thread (else
        only at their start and end)."""
        with self._lock:
            if self._started:
                return self._nvml is not None
            self._started = True
            self._nvml = self._load()
            if self._nvml is None:
                return False
        registry.register(self)
        if sampler:
            threading.Thread(target=self._sample_forever, name="gpu-metrics", daemon=True).start()
        return True

    def track(self, key: Any, gpu_ids: Iterable[str]) -> None:
        """An attempt started on these GPUs: follow its peak memory."""
        ids = tuple(gpu_ids)
        if self._nvml is None or not ids:
            return
        with self._lock:
            self._tracked[key] = (ids, 0)
        self.sample()

    def finish(self, key: Any) -> int | None:
        """The attempt ended: its peak (bytes) goes into the histogram, and is returned."""
        if self._nvml is None:
            return None
        self.sample()
        with self._lock:
            entry = self._tracked.pop(key, None)
        if entry is None or entry[1] <= 0:
            return None
        self.peaks.observe(entry[1])
        return entry[1]

    def sample(self) -> None:
        """Raise each tracked attempt's peak to what its GPUs use now."""
        with self._lock:
            tracked = list(self._tracked.items())
        if not tracked:
            return
        used = {gpu: self._used(gpu) for ids, _ in (entry for _, entry in tracked) for gpu in ids}
        with self._lock:
            for key, (ids, _) in tracked:
                now = max((used[g] or 0 for g in ids), default=0)
                if key in self._tracked and now > self._tracked[key][1]:
                    self._tracked[key] = (ids, now)

    def _sample_forever(self) -> None:
        while True:
            time.sleep(GPU_SAMPLE_SECONDS)
            try:
                self.sample()
            except Exception as exc:  # a flaky driver must not end the sampling
                log.debug("GPU sample failed: %s", exc)

    def _handle(self, nvml: ModuleType, gpu: str) -> Any:
        if gpu.isdigit():
            return nvml.nvmlDeviceGetHandleByIndex(int(gpu))
        return nvml.nvmlDeviceGetHandleByUUID(gpu)

    def _used(self, gpu: str) -> int | None:
        nvml = self._nvml
        try:
            assert nvml is not None
            return int(nvml.nvmlDeviceGetMemoryInfo(self._handle(nvml, gpu)).used)
        except Exception:  # a GPU id NVML does not know, a flaky driver
            return None

    def collect(self) -> Iterator[Metric]:
        nvml = self._nvml
        if nvml is None:
            return
        labels = ["gpu", "uuid"]
        families = {
            "util": GaugeMetricFamily(
                "trainyard_gpu_utilization_ratio",
                "Share of the last sample period the GPU was busy (NVML), 0-1.",
                labels=labels,
            ),
            "used": GaugeMetricFamily(
                "trainyard_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=labels
            ),
            "total": GaugeMetricFamily(
                "trainyard_gpu_memory_total_bytes", "GPU memory (NVML).", labels=labels
            ),
            "temp": GaugeMetricFamily(
                "trainyard_gpu_temperature_celsius", "GPU core temperature (NVML).", labels=labels
            ),
        }
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except Exception as exc:
            log.warning("GPU metrics: NVML did not answer: %s", exc)
            return
        for index in range(count):
            _add_device(nvml, index, families)
        yield from families.values()
        yield from self.peaks.collect()


def _add_device(nvml: ModuleType, index: int, families: dict[str, GaugeMetricFamily]) -> None:
    """One GPU's samples; a reading the device does not support is left out."""
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = nvml.nvmlDeviceGetUUID(handle)
    except Exception:  # gone, or lost from the bus: no series rather than a wrong one
        return
    labels = [str(index), uuid.decode() if isinstance(uuid, bytes) else str(uuid)]
    readings: dict[str, Callable[[], float]] = {
        "util": lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100,
        "used": lambda: nvml.nvmlDeviceGetMemoryInfo(handle).used,
        "total": lambda: nvml.nvmlDeviceGetMemoryInfo(handle).total,
        "temp": lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
    }
    for key, read in readings.items():
        with contextlib.suppress(Exception):  # NVMLError_NotSupported and the like
            families[key].add_metric(labels, float(read()))


GPU_METRICS = GpuMetrics()
"""The process's one NVML view (NVML is per process, like REGISTRY)."""
