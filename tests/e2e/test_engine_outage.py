"""The Docker engine goes away while a job runs, then comes back."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import Settings
from tests.conftest import Harness

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
PIDFILE = Path("/run/trainyard/dockerd.pid")


def _engine_up() -> bool:
    probe = subprocess.run(["docker", "info"], check=False, capture_output=True, timeout=20)
    return probe.returncode == 0


def test_a_job_killed_by_an_engine_restart_is_retried_and_succeeds(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    if not PIDFILE.exists():
        pytest.fail(
            "dockerd was not started by scripts/ensure-docker.sh; run the tests via make test"
        )
    h = start_harness(
        make_settings(database_url=sqlite_url, reconcile_interval=1, retry_backoff_seconds=0.5)
    )
    job = h.submit({"params": {"epochs": 6, "epoch_seconds": 1}, "max_retries": 0})
    h.wait_for(job["id"], lambda j: '"epoch": 2' in h.logs(j["id"]))

    pid = int(PIDFILE.read_text().strip())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    # Gone, not just refusing `docker info`: a stopping dockerd still answers /version for a
    # moment after it logs "shutdown complete".
    while _engine_up() or Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, "dockerd did not stop"
        time.sleep(0.2)
    health = h.client.get("/health")
    assert health.status_code == 503
    assert health.json()["checks"]["docker"]["ok"] is False
    assert h.client.get("/jobs").status_code == 200  # the API carries on without the engine

    subprocess.run([str(ROOT / "scripts" / "ensure-docker.sh"), "--gpu-standin"], check=True)
    done = h.wait_final(job["id"], timeout=120)
    assert done["status"] == "succeeded", done
    reasons = " || ".join(f"{a['outcome']}: {a['reason'][:160]}" for a in done["attempts"])
    assert [a["outcome"] for a in done["attempts"]] == ["infra_error", "succeeded"], reasons
    assert done["retries_used"] == 0  # max_retries was 0: the outage did not spend it
    log = h.logs(job["id"])
    assert "resuming from checkpoint" in log
    assert h.client.get("/health").status_code == 200
    h.wait_no_containers(timeout=30)
