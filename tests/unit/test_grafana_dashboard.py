"""The shipped Grafana dashboard and the exporter cannot drift apart: every metric a panel
queries is one the exporter writes, and every family the exporter writes has a panel.

The exporter's output here is complete: this process's registry, the database gauges from one
read (given as data: no database needed to know the names) and the GPU series from NVML
answers (a fake module: this host has no GPUs). tests/e2e/test_prometheus_server.py runs every
panel's query on a real Prometheus."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent.core.records import AgentInfo
from agent.db.gauges import DatabaseGauges
from agent.metrics_collector import GpuMetrics, database_registry, exposition

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "trainyard-dashboard.json"
METRIC = re.compile(r"\btrainyard_[a-z0-9_]+")
HISTOGRAM_SERIES = ("_bucket", "_count", "_sum")


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that queries (rows hold none; a collapsed row nests its panels)."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return found


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dashboard) for t in p["targets"]]


def exported() -> dict[str, str]:
    """Every family the exporter writes: its name in the text format → its type."""
    now = datetime.now(UTC)
    agent = AgentInfo(
        id="gpu-host-1",
        hostname="h",
        started_at=now,
        heartbeat_at=now,
        stopped_at=None,
        slots=4,
        memory_bytes=2**36,
        cpus=16,
        gpu_ids=["0", "1"],
        engine_error=None,
        running=1,
        held_memory_bytes=2**32,
        held_cpus=2,
        gpu_holders={"0": "a" * 32},
    )
    gauges = DatabaseGauges(
        jobs={("queued", None): 2, ("failed", "oom"): 1},
        oldest_due_since=now - timedelta(seconds=5),
        agents=[agent],
        read_at=now,
    )
    gpus = CollectorRegistry()
    assert GpuMetrics(load=_OneGpu).start(gpus, sampler=False)
    text = exposition(database_registry(lambda: gauges, heartbeat_seconds=5), gpus).decode()
    types = [line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE ")]
    return {name: kind for name, kind in types}


def series_names(families: dict[str, str]) -> set[str]:
    names = set()
    for name, kind in families.items():
        names.add(name)
        if kind == "histogram":
            names.update(name + suffix for suffix in HISTOGRAM_SERIES)
    return names


def test_the_dashboard_is_json_with_the_datasource_as_a_variable() -> None:
    dashboard = load()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_metric_a_panel_queries_is_exported() -> None:
    known = series_names(exported())
    asked = {name for expr in queries(load()) for name in METRIC.findall(expr)}
    assert asked, "no panel queries a trainyard metric"
    assert asked <= known, f"panels query metrics the exporter does not write: {asked - known}"


def test_every_exported_family_has_a_panel() -> None:
    asked = {name for expr in queries(load()) for name in METRIC.findall(expr)}
    families = exported()
    missing = []
    for name, kind in families.items():
        if name.endswith("_created"):  # prometheus_client's creation times: not for graphs
            continue
        forms = {name} | ({name + s for s in HISTOGRAM_SERIES} if kind == "histogram" else set())
        if not forms & asked:
            missing.append(name)
    assert not missing, f"exported families with no panel: {missing}"


@pytest.mark.parametrize(
    "expr", ["trainyard_nope", "rate(trainyard_queue_wait_seconds_bukket[5m])"]
)
def test_a_misspelt_metric_would_be_caught(expr: str) -> None:
    known = series_names(exported())
    assert not set(METRIC.findall(expr)) <= known


class _OneGpu(SimpleNamespace):
    """NVML's answers for one GPU that supports every reading."""

    NVML_TEMPERATURE_GPU = 0

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return "GPU-0"

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=10)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(used=2**30, total=2**34)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return 50
