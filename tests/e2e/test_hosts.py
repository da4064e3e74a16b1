"""Hosts that work as one, with no shared storage: the API and two agents run as separate
processes with separate log and data directories (as on separate hosts). Logs (tail and
follow) and outputs of jobs from both agents come back through the API, from the agents'
own endpoints, which only answer the shared secret."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import reset_postgres
from tests.e2e.conftest import Proc, agent_env, free_port, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.postgres]

SECRET = "s3cret-shared-between-api-and-agents"


def test_logs_and_outputs_of_jobs_on_two_hosts_come_back_through_the_api(
    tmp_path: Path, procs: list[Proc], pg_database: str
) -> None:
    reset_postgres(pg_database)
    common = {"TRAINYARD_DATABASE_URL": pg_database, "TRAINYARD_AGENT_SECRET": SECRET}
    api_port = free_port()
    api_home = tmp_path / "api-host"
    api_home.mkdir()
    procs.append(
        Proc(
            ["api"],
            agent_env(api_home, "unused", TRAINYARD_PORT=str(api_port), **common),
            api_home / "api.log",
        )
    )
    agents = {}
    for name in ("host-a", "host-b"):
        home = tmp_path / name
        home.mkdir()
        port = free_port()
        env = agent_env(
            home,
            f"test-{name}-{api_port}",
            TRAINYARD_AGENT_LISTEN=f"127.0.0.1:{port}",
            TRAINYARD_MAX_CONCURRENT_JOBS="1",
            TRAINYARD_POLL_INTERVAL="0.2",
            **common,
        )
        procs.append(Proc(["agent"], env, home / "agent.log"))
        agents[env["TRAINYARD_AGENT_ID"]] = (home, port)
    base = f"http://127.0.0.1:{api_port}"
    wait_for(lambda: len(httpx.get(f"{base}/agents").json()) == 2, what="both agents")

    jobs = [
        httpx.post(f"{base}/jobs", json={"params": {"epochs": 3, "epoch_seconds": 1}}).json()
        for _ in range(2)
    ]
    running = [
        wait_for(
            lambda j=j: (
                (x := httpx.get(f"{base}/jobs/{j['id']}").json())["status"] == "running" and x
            ),
            what="the job to run",
        )
        for j in jobs
    ]
    hosts = {r["attempts"][-1]["agent_id"] for r in running}
    assert hosts == set(agents)  # one job on each host

    # Follow one job's log live through the API (proxied from its agent) until it ends.
    followed = running[0]
    with httpx.stream(
        "GET",
        f"{base}/jobs/{followed['id']}/logs",
        params={"follow": "true", "tail": 1000},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        streamed = list(response.iter_lines())
    assert sum('"epoch": ' in line for line in streamed) == 3
    assert streamed[-1].endswith("removed")

    for job in jobs:
        done = wait_for(
            lambda j=job: (
                (x := httpx.get(f"{base}/jobs/{j['id']}").json())["status"] == "succeeded" and x
            ),
            what="the job to succeed",
        )
        agent_id = done["attempts"][-1]["agent_id"]
        home, port = agents[agent_id]
        # The files are only on that agent's host: not on the API's, not on the other agent's.
        assert (home / "logs" / "jobs" / f"{job['id']}.log").exists()
        assert not (api_home / "logs" / "jobs" / f"{job['id']}.log").exists()

        tail = httpx.get(f"{base}/jobs/{job['id']}/logs", params={"tail": 200}).text
        assert '"epoch": 3' in tail and "training complete" in tail

        listing = httpx.get(f"{base}/jobs/{job['id']}/outputs").json()
        names = {f["path"]: f for f in listing["files"]}
        assert "result.json" in names and listing["truncated"] is False
        result = httpx.get(f"{base}/jobs/{job['id']}/outputs/result.json")
        assert result.status_code == 200
        assert json.loads(result.content)["epochs"] == 3
        assert len(result.content) == names["result.json"]["size"]
        part = httpx.get(
            f"{base}/jobs/{job['id']}/outputs/result.json", headers={"Range": "bytes=0-9"}
        )
        assert part.status_code == 206 and part.content == result.content[:10]
        escape = httpx.get(f"{base}/jobs/{job['id']}/outputs/..%2F..%2Ftrainyard.db")
        assert escape.status_code in (400, 404)

        # The agent's endpoint answers only the shared secret.
        direct = f"http://127.0.0.1:{port}/internal/v1/jobs/{job['id']}/logs"
        assert httpx.get(direct).status_code == 401
        assert httpx.get(direct, headers={"Authorization": "Bearer wrong"}).status_code == 401
        auth = {"Authorization": f"Bearer {SECRET}"}
        assert httpx.get(direct, headers=auth).status_code == 200
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics")  # for Prometheus, no secret
        assert metrics.status_code == 200 and "trainyard_attempts_finished_total" in metrics.text

    for proc in procs:
        assert proc.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
