"""GPUs and memory as a ledger; priorities, backfill and the no-starvation bound; leases."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

from agent.config import Settings
from agent.core.scheduling import Capacity
from tests.conftest import Harness

pytestmark = pytest.mark.docker


def _sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def test_random_gpu_jobs_never_share_a_device_and_all_drain(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], database_url: str
) -> None:
    h = start_harness(
        make_settings(
            database_url=database_url, gpus="0,1,2,3", max_concurrent_jobs=4, default_cpus=0.25
        )
    )
    rng = random.Random(5)
    jobs = []
    for _ in range(16):
        gpus = rng.choice([0, 1, 1, 2, 2, 3, 4])
        pause = rng.choice([0.3, 0.6, 1.0])
        body = {"command": _sh(f"echo visible=$NVIDIA_VISIBLE_DEVICES; sleep {pause}")}
        body["resources"] = {"gpus": gpus, "memory": "32m"}
        jobs.append(h.submit(body))

    violations: list[str] = []
    samples = [0]
    stop = threading.Event()

    def watch() -> None:
        # Sample what the engine itself says each running container got.
        while not stop.is_set():
            seen: dict[str, str] = {}
            for c in h.docker.api.containers(filters={"label": f"trainyard.agent={h.agent_id}"}):
                try:
                    attrs = h.docker.api.inspect_container(c["Id"])
                except Exception:
                    continue  # removed meanwhile
                for request in attrs["HostConfig"].get("DeviceRequests") or []:
                    for gpu in request["DeviceIDs"]:
                        if gpu in seen:
                            violations.append(f"GPU {gpu} in {seen[gpu]} and {c['Id'][:12]}")
                        seen[gpu] = c["Id"][:12]
            [agent] = [a for a in h.client.get("/agents").json() if a["id"] == h.agent_id]
            held = agent["gpus"]["held"]
            if len(held) + len(agent["gpus"]["free"]) != 4:
                violations.append(f"ledger inconsistent: {agent['gpus']}")
            samples[0] += 1
            stop.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        finished = [h.wait_final(j["id"], timeout=120) for j in jobs]
    finally:
        stop.set()
        watcher.join(5)
    assert violations == []
    assert samples[0] > 10
    for job in finished:
        assert job["status"] == "succeeded", job
        ids = job["attempts"][0]["gpu_ids"]
        assert len(ids) == job["resources"]["gpus"]
        visible = [
            ln.split("visible=")[1] for ln in h.logs(job["id"]).splitlines() if "visible=" in ln
        ]
        assert visible == [",".join(ids) or "void"]  # the container saw exactly its ids
    h.wait_no_containers()
    [agent] = [a for a in h.client.get("/agents").json() if a["id"] == h.agent_id]
    assert agent["gpus"]["held"] == {}
    assert agent["running"] == 0


def test_higher_priority_starts_first_then_oldest(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    h = start_harness(make_settings(database_url=sqlite_url, max_concurrent_jobs=1))
    blocker = h.submit({"command": _sh("sleep 1.5")})
    h.wait_for(blocker["id"], lambda j: j["status"] == "running")
    low = h.submit({"command": _sh("true"), "priority": 0})
    high = h.submit({"command": _sh("true"), "priority": 5})
    low2 = h.submit({"command": _sh("true"), "priority": 0})
    mid = h.submit({"command": _sh("true"), "priority": 1})
    done = {j["id"]: h.wait_final(j["id"]) for j in (low, high, low2, mid)}
    order = sorted(done, key=lambda i: done[i]["attempts"][0]["started_at"])
    assert order == [high["id"], mid["id"], low["id"], low2["id"]]


def test_small_jobs_backfill_until_the_head_has_waited_too_long(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    h = start_harness(
        make_settings(
            database_url=sqlite_url,
            gpus="0,1,2,3",
            max_concurrent_jobs=4,
            default_cpus=0.25,
            starvation_seconds=1.5,
        )
    )
    holder = h.submit({"command": _sh("sleep 4"), "resources": {"gpus": 2}})
    h.wait_for(holder["id"], lambda j: j["status"] == "running")
    head = h.submit({"command": _sh("sleep 0.5"), "resources": {"gpus": 4}})
    early = h.submit({"command": _sh("sleep 0.5"), "resources": {"gpus": 1}})
    h.wait_final(early["id"])
    # Wait until the head has been queued longer than the bound, by the database's clock.
    h.wait_for(head["id"], lambda j: _age(h, j) > 1.6, timeout=30)
    late = h.submit({"command": _sh("true"), "resources": {"gpus": 1}})

    jobs = {
        name: h.wait_final(j["id"], timeout=60)
        for name, j in {"holder": holder, "head": head, "early": early, "late": late}.items()
    }
    start = {name: job["attempts"][0]["started_at"] for name, job in jobs.items()}
    assert all(job["status"] == "succeeded" for job in jobs.values())
    assert start["early"] < start["head"]  # backfilled while the head could not fit
    assert start["head"] >= jobs["holder"]["finished_at"]  # the head needed every GPU
    assert start["late"] > start["head"]  # past the bound, the gap was kept for the head


def test_an_agent_that_lost_its_lease_stops_and_writes_nothing(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    h = start_harness(make_settings(database_url=sqlite_url))
    job = h.submit({"params": {"sleep_seconds": 60}})
    running = h.wait_for(job["id"], lambda j: j["status"] == "running")
    with h.system.db.transaction() as s:  # another agent took the job over
        s.execute(
            text("UPDATE jobs SET agent_id = 'other', lease_token = 'theirs' WHERE id = :id"),
            {"id": job["id"]},
        )
    h.wait_no_containers()
    h.wait_for(
        job["id"],
        lambda j: "result not stored" in h.logs(j["id"]) or "lease lost" in h.logs(j["id"]),
    )
    after = h.job(job["id"])
    assert after["status"] == "running"  # untouched: only the new owner writes
    assert after["agent_id"] == "other"
    assert after["attempts"][0]["outcome"] is None
    assert "lease lost (the job moved to another agent)" in h.logs(job["id"])
    assert running["attempts"][0]["container_id"]


def test_a_job_no_live_agent_can_run_says_why(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    h = start_harness(make_settings(database_url=sqlite_url))
    big = Capacity(slots=4, memory_bytes=64 * 2**30, cpus=16, gpu_ids=("0", "1", "2", "3"))
    h.system.queue.register_agent("test-gpu-box", "gpu-box", big)
    job = h.submit({"command": _sh("true"), "resources": {"gpus": 2}})  # only the GPU box fits
    assert h.job(job["id"])["unschedulable_reason"] is None
    h.system.queue.agent_stopped("test-gpu-box")
    reason = h.job(job["id"])["unschedulable_reason"]
    assert reason == "resources.gpus 2 is more than any agent has (largest: 0)"
    listed = h.client.get("/jobs", params={"status": "queued"}).json()["items"]
    assert listed[0]["unschedulable_reason"] == reason
    refused = h.client.post("/jobs", json={"resources": {"gpus": 2}})
    assert refused.status_code == 422
    agents = {a["id"]: a for a in h.client.get("/agents").json()}
    assert agents["test-gpu-box"]["alive"] is False
    assert agents[h.agent_id]["alive"] is True
    assert agents[h.agent_id]["slots"] == 2
    h.client.post(f"/jobs/{job['id']}/cancel")


def _age(h: Harness, job: dict[str, Any]) -> float:
    created = datetime.fromisoformat(job["created_at"])
    return (datetime.now(UTC) - created).total_seconds()
