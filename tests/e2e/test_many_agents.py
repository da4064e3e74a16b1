"""Three agent processes share one PostgreSQL queue; one dies; nothing runs twice to success."""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from agent.config import Settings
from tests.conftest import FINAL, Harness, reset_postgres
from tests.e2e.conftest import Proc, agent_env

pytestmark = [pytest.mark.docker, pytest.mark.postgres]

JOBS = 100


@pytest.fixture
def pg_url(pg_database: str) -> str:
    reset_postgres(pg_database)
    return pg_database


def test_three_agents_run_every_job_exactly_once_and_survive_losing_one(
    tmp_path: Path,
    procs: list[Proc],
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    pg_url: str,
) -> None:
    settings = make_settings(database_url=pg_url, max_queued=JOBS + 10)
    api = start_harness(settings, with_agent=False)
    ids = {name: f"{settings.agent_id}-{name}" for name in ("a", "b", "c")}

    def start(name: str) -> Proc:
        env = agent_env(
            tmp_path,
            ids[name],
            TRAINYARD_DATABASE_URL=pg_url,
            TRAINYARD_LOG_DIR=str(settings.log_dir),  # shared storage for the job logs
            TRAINYARD_DATA_DIR=str(tmp_path / f"data-{name}"),
            TRAINYARD_MAX_CONCURRENT_JOBS="2",
            TRAINYARD_LEASE_SECONDS="3",
            TRAINYARD_HEARTBEAT_SECONDS="1",
            TRAINYARD_POLL_INTERVAL="0.2",
        )
        proc = Proc(["agent"], env, tmp_path / f"agent-{name}.log")
        procs.append(proc)
        return proc

    agents = {name: start(name) for name in ids}
    script = "echo ran $TRAINYARD_JOB_ID attempt $TRAINYARD_ATTEMPT; sleep {}"
    # Six long jobs go first (one per slot), so agent b surely holds some when it is killed.
    jobs = [
        api.submit(
            {
                "command": ["sh", "-c", script.format(5 if i < 6 else 0.5)],
                "max_retries": 0,
                "priority": 1 if i < 6 else 0,
            }
        )
        for i in range(JOBS)
    ]

    # Kill agent b with SIGKILL while it is running jobs.
    deadline = time.monotonic() + 120
    while not any(
        a["running"] > 0 and a["id"] == ids["b"] for a in api.client.get("/agents").json()
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)
    agents["b"].stop(signal.SIGKILL)

    deadline = time.monotonic() + 240
    while True:
        page = api.client.get("/jobs", params={"limit": 500}).json()["items"]
        if all(j["status"] in FINAL for j in page):
            break
        assert time.monotonic() < deadline, collections.Counter(j["status"] for j in page)
        time.sleep(0.5)

    finished = [api.job(j["id"]) for j in jobs]
    assert all(j["status"] == "succeeded" for j in finished)
    for job in finished:
        assert [a["outcome"] for a in job["attempts"]].count("succeeded") == 1
    ran_on = collections.Counter(j["attempts"][-1]["agent_id"] for j in finished)
    assert set(ran_on) == set(ids.values()) or set(ran_on) == {ids["a"], ids["c"]}
    taken_over = [j for j in finished if any(a["outcome"] == "infra_error" for a in j["attempts"])]
    assert taken_over, f"agent b's jobs should have been requeued; ran on: {ran_on}"
    for job in taken_over:
        [lost] = [a for a in job["attempts"] if a["outcome"] == "infra_error"]
        assert lost["agent_id"] == ids["b"]
        assert f"agent {ids['b']} stopped renewing its lease" in lost["reason"]
        assert job["retries_used"] == 0  # not charged to max_retries
        assert job["attempts"][-1]["agent_id"] != ids["b"]
    agent_view = {a["id"]: a for a in api.client.get("/agents").json()}
    assert agent_view[ids["b"]]["alive"] is False
    assert agent_view[ids["a"]]["alive"] and agent_view[ids["c"]]["alive"]

    # Agent b comes back: it removes what it left behind and frees its ledger entries.
    agents["b"] = start("b")
    deadline = time.monotonic() + 60
    while api.docker.api.containers(all=True, filters={"label": f"trainyard.agent={ids['b']}"}):
        assert time.monotonic() < deadline, "agent b left containers behind"
        time.sleep(0.2)
    for proc in agents.values():
        proc.stop(signal.SIGTERM)
    with psycopg.connect(pg_url.replace("+psycopg", "")) as conn:
        held = conn.execute("SELECT count(*) FROM attempts WHERE released_at IS NULL").fetchone()
    assert held == (0,)
    for agent_id in ids.values():
        assert (
            api.docker.api.containers(all=True, filters={"label": f"trainyard.agent={agent_id}"})
            == []
        )
    print(f"\nmany agents: jobs={JOBS} per agent={dict(ran_on)} taken over={len(taken_over)}")


def test_postgres_notifications_wake_agents_in_other_processes(
    tmp_path: Path,
    procs: list[Proc],
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    pg_url: str,
) -> None:
    """With a 60 s poll, only LISTEN/NOTIFY can start a job submitted from another process
    within the test's 30 s bound, and bring its cancel across."""
    settings = make_settings(database_url=pg_url)
    api = start_harness(settings, with_agent=False)
    env = agent_env(
        tmp_path,
        settings.agent_id,
        TRAINYARD_DATABASE_URL=pg_url,
        TRAINYARD_LOG_DIR=str(settings.log_dir),
        TRAINYARD_POLL_INTERVAL="60",
        TRAINYARD_HEARTBEAT_SECONDS="1",
    )
    agent = Proc(["agent"], env, tmp_path / "agent.log")
    procs.append(agent)
    deadline = time.monotonic() + 30
    while not any(a["id"] == settings.agent_id for a in api.client.get("/agents").json()):
        assert time.monotonic() < deadline, "the agent never registered"
        time.sleep(0.1)
    time.sleep(2)  # past the agent's start-up claim: from here only a notification wakes it

    quick = api.submit({"command": ["true"]})
    assert api.wait_final(quick["id"], timeout=30)["status"] == "succeeded"
    slow = api.submit({"params": {"sleep_seconds": 120}})
    api.wait_for(slow["id"], lambda j: "sleeping 120" in api.logs(j["id"]), timeout=30)
    api.client.post(f"/jobs/{slow['id']}/cancel")
    assert api.wait_final(slow["id"], timeout=30)["status"] == "cancelled"
    api.wait_no_containers()
    agent.stop(signal.SIGTERM)
