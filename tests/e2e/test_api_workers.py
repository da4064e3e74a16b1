"""`run.py api` with TRAINYARD_API_WORKERS: several processes serve one port and one queue."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from agent.core.scheduling import Capacity
from agent.db.engine import Database
from agent.db.migrate import upgrade
from agent.db.queue import JobQueue
from tests.e2e.conftest import Proc, agent_env, free_port, wait_for

WORKERS = 2
JOBS = 60


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _serving_workers(pid: int) -> list[int]:
    """Worker processes of the API: children running uvicorn's spawned server."""
    workers = []
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline:
            workers.append(child)
    return workers


# SIGUSR1, the upgrade signal, stops the API gracefully too (uncaught, it would kill the
# supervisor and leave its workers serving).
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGUSR1])
def test_api_workers_share_the_port_and_every_submit_lands_once(
    tmp_path: Path, procs: list[Proc], stop: signal.Signals
) -> None:
    url = f"sqlite:///{tmp_path / 'data' / 'trainyard.db'}"
    upgrade(url)
    db = Database(url)
    queue = JobQueue(db)
    # An agent elsewhere (not started here): the API refuses jobs no live agent could run.
    queue.register_agent("test-workers-agent", "gpu-box", Capacity(4, 64 * 2**30, 16.0, ()))
    port = free_port()
    env = agent_env(
        tmp_path,
        "test-workers-api",
        TRAINYARD_PORT=str(port),
        TRAINYARD_API_WORKERS=str(WORKERS),
        TRAINYARD_DATABASE_URL=url,
    )
    proc = Proc(["api"], env, tmp_path / "api.log")
    procs.append(proc)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, what="the API")
    wait_for(lambda: len(_serving_workers(proc.popen.pid)) == WORKERS, what="its workers")

    def submit(i: int) -> str:
        with httpx.Client(base_url=base, timeout=30) as client:
            response = client.post("/jobs", json={"name": f"w{i}", "command": ["true"]})
            assert response.status_code == 201, response.text
            return str(response.json()["id"])

    queue.heartbeat("test-workers-agent", engine_error=None)  # live however slow the start
    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(submit, range(JOBS)))

    assert len(set(ids)) == JOBS
    assert queue.stats().counts["queued"] == JOBS
    listed = httpx.get(f"{base}/jobs", params={"limit": 100}).json()["items"]
    assert {job["id"] for job in listed} == set(ids)
    workers = _serving_workers(proc.popen.pid)
    assert proc.stop(stop) in (0, -signal.SIGTERM)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "a worker outlived it"
    log = proc.log.read_text()
    assert "Traceback" not in log
    assert log.count("Application startup complete") == WORKERS
    db.dispose()
