"""A real Prometheus server (Debian's `prometheus`, on 127.0.0.1) scrapes a real `run.py`
service every second; what it stored is read back through its HTTP API."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from tests.e2e.conftest import ROOT, Proc, agent_env, free_port, wait_for

pytestmark = pytest.mark.docker

LONG = [
    "python3",
    "-c",
    "import json, time; print(json.dumps({'step': 1, 'total_steps': 5}), "
    "flush=True); time.sleep(120)",
]
QUICK = ["sh", "-c", "echo done"]


def dashboard_queries() -> list[str]:
    """The dashboard's queries, with its variables as Grafana would fill them."""
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "trainyard-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return [e.replace("$__rate_interval", "1m").replace("$agent", ".*") for e in exprs]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: run scripts/ensure-prometheus.sh (make test does)")
    server = Prometheus(binary, tmp_path / "prometheus")
    yield server
    server.stop()


class Prometheus:
    def __init__(self, binary: str, home: Path) -> None:
        self.binary = binary
        self.home = home
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self, target: str) -> None:
        """Scrape `target` (host:port) every second, storing under this test's directory."""
        self.home.mkdir(parents=True)
        config = self.home / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "scrape_configs:\n"
            "  - job_name: trainyard\n"
            "    metrics_path: /metrics\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.log = (self.home / "prometheus.log").open("wb")
        self.popen = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.home / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(
            lambda: httpx.get(f"{self.base}/-/ready").status_code == 200,
            what="Prometheus to be ready",
            timeout=30,
        )

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector of `promql` (its result list; empty when nothing matches)."""
        reply = httpx.get(f"{self.base}/api/v1/query", params={"query": promql})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        if self.popen is not None:
            self.log.close()


@pytest.fixture
def service(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[tuple[Proc, int]]:
    """`python run.py` (API and embedded agent, one slot) on a free port; on the way out it
    is stopped with SIGTERM (its agent stops its containers), and any container it still
    left is removed, so a failing test leaks nothing."""
    port = free_port()
    agent_id = f"test-prom-{port}"
    env = agent_env(
        tmp_path,
        agent_id,
        TRAINYARD_PORT=str(port),
        TRAINYARD_HOST="127.0.0.1",
        TRAINYARD_MAX_CONCURRENT_JOBS="1",
        TRAINYARD_HEARTBEAT_SECONDS="1",
    )
    proc = Proc([], env, tmp_path / "server.log")
    try:
        yield proc, port
    finally:
        if proc.popen.poll() is None:
            try:
                proc.stop(signal.SIGTERM)
            except subprocess.TimeoutExpired:
                proc.stop(signal.SIGKILL)
        for container in docker_client.api.containers(
            all=True, filters={"label": f"trainyard.agent={agent_id}"}
        ):
            docker_client.api.remove_container(container["Id"], force=True)


def test_prometheus_scrapes_the_service(service: tuple[Proc, int], prometheus: Prometheus) -> None:
    proc, port = service
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, what="the service")

    def submit(command: list[str]) -> str:
        reply = httpx.post(f"{base}/jobs", json={"command": command})
        assert reply.status_code == 201, reply.text
        job_id: str = reply.json()["id"]
        return job_id

    def status(job_id: str) -> str:
        job: str = httpx.get(f"{base}/jobs/{job_id}").json()["status"]
        return job

    quick = submit(QUICK)
    wait_for(lambda: status(quick) == "succeeded", what="the quick job")
    long = submit(LONG)  # holds the one slot …
    waiting = submit(QUICK)  # … so this one waits in the queue
    wait_for(lambda: status(long) == "running", what="the long job to run")

    prometheus.start(f"127.0.0.1:{port}")
    expected = {
        'up{job="trainyard"}': 1,
        "trainyard_jobs_submitted_total": 3,
        'trainyard_queue_depth{status="queued"}': 1,
        'trainyard_queue_depth{status="running"}': 1,
        'sum(trainyard_jobs_finished{status="succeeded"})': 1,
        f'trainyard_job_progress{{job_id="{long}"}}': 0.2,
        "sum(trainyard_attempts_finished_total)": 1,
        "trainyard_claim_to_start_seconds_count": 2,
        "trainyard_agent_up": 1,
        "trainyard_agent_attempts_held": 1,
        "trainyard_agent_memory_held_bytes": 256 * 2**20,
        "trainyard_database_up": 1,
    }

    def stored() -> dict[str, float | None]:
        return {promql: prometheus.value(promql) for promql in expected}

    wait_for(lambda: stored() == expected, what=f"Prometheus to store {expected}", timeout=30)
    # A histogram as a dashboard reads it: the median claim-to-start latency, in seconds.
    median = prometheus.value(
        "histogram_quantile(0.5, sum by (le) (trainyard_claim_to_start_seconds_bucket))"
    )
    assert median is not None and 0 < median <= 30
    wait_for(
        lambda: (prometheus.value("increase(trainyard_agent_heartbeats_total[10s])") or 0) > 0,
        what="Prometheus to see heartbeats counted",
        timeout=30,
    )

    # Every query of the shipped Grafana dashboard is PromQL this Prometheus accepts.
    for promql in dashboard_queries():
        prometheus.query(promql)

    for job_id in (waiting, long):  # the waiting one first, or it runs once the slot frees
        assert httpx.post(f"{base}/jobs/{job_id}/cancel").status_code == 200
    wait_for(
        lambda: prometheus.value('sum(trainyard_jobs_finished{status="cancelled"})') == 2,
        what="Prometheus to see both jobs cancelled",
        timeout=30,
    )
    assert proc.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert prometheus.popen is not None and prometheus.popen.poll() is None  # still up
