"""The real entry point as users run it: `python run.py` over real HTTP, and a killed agent."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import docker
import httpx
import pytest

from agent.config import Settings
from tests.conftest import Harness
from tests.e2e.conftest import Proc, agent_env, free_port, wait_for

pytestmark = pytest.mark.docker


def test_run_py_serves_the_original_train_call_over_http(tmp_path: Path, procs: list[Proc]) -> None:
    port = free_port()
    agent_id = f"test-e2e-{port}"
    proc = Proc(
        [], agent_env(tmp_path, agent_id, TRAINYARD_PORT=str(port)), tmp_path / "server.log"
    )
    procs.append(proc)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, what="the service")

    accepted = httpx.post(f"{base}/train", json={"epochs": 3, "batch_size": 16})
    assert accepted.status_code == 201
    job_id = accepted.json()["id"]
    job = wait_for(
        lambda: (j := httpx.get(f"{base}/jobs/{job_id}").json())["status"] == "succeeded" and j,
        what="the job to succeed",
    )
    assert job["exit_code"] == 0
    log = httpx.get(f"{base}/jobs/{job_id}/logs", params={"tail": 50}).text
    assert '"epoch": 3' in log
    assert (tmp_path / "data" / "trainyard.db").exists()  # the embedded SQLite default
    assert (tmp_path / "logs" / "jobs" / f"{job_id}.log").exists()

    _stop_cleanly(proc)
    # A restarted service still knows the job.
    proc2 = Proc(
        [], agent_env(tmp_path, agent_id, TRAINYARD_PORT=str(port)), tmp_path / "server.log"
    )
    procs.append(proc2)
    wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, what="the restart")
    assert httpx.get(f"{base}/jobs/{job_id}").json()["status"] == "succeeded"
    _stop_cleanly(proc2)


def _stop_cleanly(proc: Proc) -> None:
    # uvicorn finishes its shutdown, then re-raises SIGTERM so supervisors see the signal.
    assert proc.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert proc.log.read_text().rstrip().endswith(f"Finished server process [{proc.popen.pid}]")


def test_a_killed_agent_re_attaches_to_its_running_container(
    tmp_path: Path,
    procs: list[Proc],
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    docker_client: docker.DockerClient,
) -> None:
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'data' / 'trainyard.db'}")
    api = start_harness(settings, with_agent=False)
    env = agent_env(tmp_path, settings.agent_id, TRAINYARD_POLL_INTERVAL="0.2")
    agent = Proc(["agent"], env, tmp_path / "agent.log")
    procs.append(agent)

    # Long enough to outlive the agent's restart (about 2-3 s here).
    job = api.submit({"params": {"epochs": 4, "epoch_seconds": 3}})
    api.wait_for(job["id"], lambda j: '"epoch": 1' in api.logs(j["id"]))
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    orphans = api.containers()
    assert len(orphans) == 1  # the container outlived its agent
    assert api.job(job["id"])["status"] == "running"

    restarted = Proc(["agent"], env, tmp_path / "agent.log")
    procs.append(restarted)
    done = api.wait_final(job["id"])
    assert done["status"] == "succeeded", done
    # The container kept running while the agent was dead; the new agent took it over.
    [attempt] = done["attempts"]
    assert attempt["container_id"] == orphans[0]["Id"]
    log = api.logs(job["id"])
    assert f"re-attached to container {orphans[0]['Id'][:12]} (running)" in log
    kinds = [e["kind"] for e in api.client.get(f"/jobs/{job['id']}/events").json()]
    assert kinds == ["submitted", "claimed", "started", "reattached", "finished"]
    epochs = [line for line in log.splitlines() if '"epochs": 4' in line]
    assert [int(line.split('"epoch": ')[1].split(",")[0]) for line in epochs] == [1, 2, 3, 4]
    assert log.count("training complete") == 1
    api.wait_no_containers()
    assert docker_client.api.containers(all=True, filters={"id": orphans[0]["Id"]}) == []
    assert restarted.stop(signal.SIGTERM) == 0


def test_a_container_that_finished_while_its_agent_was_dead_is_collected(
    tmp_path: Path,
    procs: list[Proc],
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    docker_client: docker.DockerClient,
) -> None:
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'data' / 'trainyard.db'}")
    api = start_harness(settings, with_agent=False)
    env = agent_env(tmp_path, settings.agent_id)
    agent = Proc(["agent"], env, tmp_path / "agent.log")
    procs.append(agent)
    job = api.submit({"params": {"epochs": 3, "epoch_seconds": 0.5}})
    failing = api.submit({"params": {"epochs": 3, "fail_at_epoch": 2, "fail_exit_code": 4}})
    for j in (job, failing):
        api.wait_for(j["id"], lambda x: x["status"] == "running")
    agent.stop(signal.SIGKILL)
    for container in api.containers():
        docker_client.api.wait(container["Id"], timeout=60)  # both exit while no agent watches

    restarted = Proc(["agent"], env, tmp_path / "agent.log")
    procs.append(restarted)
    done = api.wait_final(job["id"])
    assert done["status"] == "succeeded"
    assert len(done["attempts"]) == 1
    assert "(exited)" in api.logs(job["id"])
    assert api.logs(job["id"]).count("training complete") == 1
    failed = api.wait_final(failing["id"])
    assert failed["attempts"][0]["exit_code"] == 4  # the real result, collected afterwards
    assert failed["attempts"][0]["outcome"] == "user_error"
    api.wait_no_containers()
    restarted.stop(signal.SIGTERM)


def test_cancel_reaches_a_job_running_in_another_process(
    tmp_path: Path,
    procs: list[Proc],
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'data' / 'trainyard.db'}")
    api = start_harness(settings, with_agent=False)  # the API and the agent share only the DB
    env = agent_env(tmp_path, settings.agent_id)
    agent = Proc(["agent"], env, tmp_path / "agent.log")
    procs.append(agent)
    job = api.submit({"params": {"sleep_seconds": 120}})
    api.wait_for(job["id"], lambda j: "sleeping 120" in api.logs(j["id"]))

    assert api.client.post(f"/jobs/{job['id']}/cancel").status_code == 200
    done = api.wait_final(job["id"], timeout=30)
    assert done["status"] == "cancelled"
    log = api.logs(job["id"])
    assert "cancel requested by api: stopping the container" in log
    assert "received SIGTERM" in log
    api.wait_no_containers()
    agent.stop(signal.SIGTERM)
