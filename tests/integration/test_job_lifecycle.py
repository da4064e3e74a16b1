"""A job goes from HTTP to a real container and back, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from agent.config import Settings
from tests.conftest import Harness

pytestmark = pytest.mark.docker


def _epoch_lines(log: str) -> list[dict[str, object]]:
    lines = []
    for line in log.splitlines():
        _, _, text = line.partition(" stdout ")
        if text.startswith("{"):
            lines.append(json.loads(text))
    return lines


def test_train_request_runs_to_success_and_the_log_holds_the_training(harness: Harness) -> None:
    response = harness.client.post("/train", json={"epochs": 3, "batch_size": 16})
    assert response.status_code == 201, response.text
    accepted = response.json()
    assert accepted["status"] == "queued"
    assert accepted["task_id"] == accepted["id"]
    assert accepted["params"] == {"epochs": 3, "batch_size": 16}

    job = harness.wait_final(accepted["id"])

    assert job["status"] == "succeeded", job
    assert job["exit_code"] == 0
    assert job["outcome"] == "succeeded"
    assert job["started_at"] is not None and job["finished_at"] is not None
    [attempt] = job["attempts"]
    assert attempt["number"] == 1
    assert attempt["outcome"] == "succeeded"
    assert attempt["exit_code"] == 0
    assert len(attempt["container_id"]) == 64
    assert attempt["agent_id"] == harness.agent_id

    removed = f"container {attempt['container_id'][:12]} removed"
    harness.wait_for(job["id"], lambda j: harness.logs(j["id"]).rstrip().endswith(removed))
    log = harness.logs(job["id"])
    epochs = _epoch_lines(log)
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert all(e["batch_size"] == 16 for e in epochs)
    assert epochs[-1]["loss"] < epochs[0]["loss"]  # it really trained
    assert f"[attempt 1] started in container {attempt['container_id'][:12]}" in log
    assert "memory=256m (no swap)" in log
    assert log.index("started in container") < log.index('"epoch": 1') < log.index("finished:")

    kinds = [e["kind"] for e in harness.client.get(f"/jobs/{job['id']}/events").json()]
    assert kinds == ["submitted", "claimed", "started", "finished"]
    harness.wait_no_containers()


def test_the_original_status_route_answers_like_jobs(harness: Harness) -> None:
    accepted = harness.client.post("/train", json={"epochs": 1}).json()
    job = harness.wait_final(accepted["id"])
    legacy = harness.client.get(f"/train/{accepted['id']}")
    assert legacy.status_code == 200
    assert legacy.json()["status"] == job["status"] == "succeeded"


def test_exit_code_3_fails_with_exit_code_3(harness: Harness) -> None:
    job = harness.submit({"params": {"exit_code": 3}, "max_retries": 0})
    job = harness.wait_final(job["id"])
    assert job["status"] == "failed"
    assert job["exit_code"] == 3
    assert job["outcome"] == "user_error"
    assert job["attempts"][0]["exit_code"] == 3
    assert "exit code 3" in job["reason"]
    harness.wait_no_containers()


def test_a_failing_job_is_retried_up_to_max_retries(harness: Harness) -> None:
    job = harness.submit({"params": {"exit_code": 5}, "max_retries": 2})
    job = harness.wait_final(job["id"])
    assert job["status"] == "failed"
    assert [a["exit_code"] for a in job["attempts"]] == [5, 5, 5]
    assert job["retries_used"] == 2
    events = harness.client.get(f"/jobs/{job['id']}/events").json()
    assert [e["kind"] for e in events].count("retry_scheduled") == 2


def test_the_container_really_has_the_requested_limits(harness: Harness) -> None:
    job = harness.submit(
        {
            "params": {"sleep_seconds": 60},
            "resources": {"memory": "96m", "cpus": 0.5},
            "env": {"MY_SETTING": "on"},
        }
    )
    running = harness.wait_for(
        job["id"], lambda j: j["status"] == "running" and j["attempts"][0]["container_id"]
    )
    container_id = running["attempts"][0]["container_id"]
    attrs = harness.docker.api.inspect_container(container_id)
    host = attrs["HostConfig"]
    assert host["Memory"] == 96 * 1024 * 1024
    assert host["MemorySwap"] == 96 * 1024 * 1024  # no swap beyond the limit
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 4096
    assert host["NetworkMode"] == "none"
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["AutoRemove"] is False
    assert attrs["Config"]["User"] == "1000:1000"
    labels = attrs["Config"]["Labels"]
    assert labels["trainyard.job_id"] == job["id"]
    assert labels["trainyard.attempt"] == "1"
    assert labels["trainyard.agent"] == harness.agent_id
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert env["MY_SETTING"] == "on"
    assert json.loads(env["TRAINYARD_PARAMS"]) == {"sleep_seconds": 60}
    assert env["TRAINYARD_ATTEMPT"] == "1"
    assert any(m["Destination"] == "/outputs" for m in attrs["Mounts"])

    harness.client.post(f"/jobs/{job['id']}/cancel")
    assert harness.wait_final(job["id"])["status"] == "cancelled"


def test_cancelling_a_running_job_stops_its_container(harness: Harness) -> None:
    job = harness.submit({"params": {"sleep_seconds": 120}})
    running = harness.wait_for(job["id"], lambda j: j["status"] == "running")
    container_id = running["attempts"][0]["container_id"]
    # Wait until the script has its SIGTERM handler (it prints this once it is sleeping).
    harness.wait_for(job["id"], lambda j: "sleeping 120" in harness.logs(j["id"]))

    response = harness.client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["cancel_requested_by"] == "api"

    job = harness.wait_final(job["id"], timeout=30)
    assert job["status"] == "cancelled"
    assert job["outcome"] == "cancelled"
    assert job["attempts"][0]["outcome"] == "cancelled"
    log = harness.logs(job["id"])
    assert "cancel requested by api: stopping the container" in log
    assert "received SIGTERM" in log  # the training script got SIGTERM, not a bare kill
    harness.wait_no_containers()
    assert harness.docker.containers.list(all=True, filters={"id": container_id}) == []
    again = harness.client.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 409
    assert "already cancelled" in again.json()["detail"]


def test_a_job_past_its_timeout_is_stopped(harness: Harness) -> None:
    job = harness.submit({"params": {"sleep_seconds": 120}, "timeout_seconds": 2})
    job = harness.wait_final(job["id"], timeout=30)
    assert job["status"] == "failed"
    assert job["outcome"] == "timeout"
    assert "timeout of 2s reached" in harness.logs(job["id"])


def test_a_missing_image_is_a_config_error_and_leaves_nothing(harness: Harness) -> None:
    job = harness.submit({"image": "trainyard/does-not-exist:1", "max_retries": 3})
    job = harness.wait_final(job["id"])
    assert job["status"] == "failed"
    assert job["outcome"] == "config_error"
    assert "image not found" in job["reason"]
    assert len(job["attempts"]) == 1  # never retried: it cannot work
    harness.wait_no_containers()


def test_a_command_missing_from_the_image_is_a_config_error(harness: Harness) -> None:
    job = harness.submit({"command": ["no-such-binary", "--go"], "max_retries": 3})
    job = harness.wait_final(job["id"])
    assert job["status"] == "failed"
    assert job["outcome"] == "config_error"
    assert len(job["attempts"]) == 1
    harness.wait_no_containers()


def test_command_replaces_the_image_cmd(harness: Harness) -> None:
    job = harness.submit({"command": ["sh", "-c", "echo hello from $TRAINYARD_JOB_ID >&2"]})
    job = harness.wait_final(job["id"])
    assert job["status"] == "succeeded"
    assert f"stderr hello from {job['id']}" in harness.logs(job["id"])


def test_list_stats_and_pagination(harness: Harness) -> None:
    ok = [harness.submit({"params": {"epochs": 1}}) for _ in range(3)]
    bad = harness.submit({"params": {"exit_code": 2}, "max_retries": 0})
    for job in [*ok, bad]:
        harness.wait_final(job["id"])

    page = harness.client.get("/jobs", params={"limit": 2}).json()
    assert page["total"] == 4
    assert [j["id"] for j in page["items"]] == [bad["id"], ok[2]["id"]]  # newest first
    page2 = harness.client.get("/jobs", params={"limit": 2, "offset": 2}).json()
    assert [j["id"] for j in page2["items"]] == [ok[1]["id"], ok[0]["id"]]
    failed = harness.client.get("/jobs", params={"status": "failed"}).json()
    assert [j["id"] for j in failed["items"]] == [bad["id"]]

    stats = harness.client.get("/stats").json()
    assert stats["counts"]["succeeded"] == 3
    assert stats["counts"]["failed"] == 1
    assert stats["total"] == 4
    assert stats["success_rate"] == pytest.approx(0.75)
    assert stats["mean_queue_wait_seconds"] > 0
    assert stats["mean_run_seconds"] > 0


def test_logs_rotate_and_tail_reads_across_rotations(
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    sqlite_url: str,
) -> None:
    h = start_harness(
        make_settings(database_url=sqlite_url, log_max_bytes=20_000, log_backup_count=3)
    )
    job = h.submit({"params": {"spam_lines": 2000, "epochs": 1}})
    job = h.wait_final(job["id"])
    assert job["status"] == "succeeded"
    log_dir = h.system.settings.log_dir / "jobs"
    files = sorted(p.name for p in log_dir.iterdir())
    base = f"{job['id']}.log"
    assert files == [base, f"{base}.1", f"{base}.2", f"{base}.3"]
    assert all((log_dir / f).stat().st_size <= 20_000 + 200 for f in files)

    lines = h.logs(job["id"], tail=400).splitlines()
    assert len(lines) == 400
    assert lines[-1].endswith("removed")
    spam = [int(line.split()[3]) for line in lines if " stdout spam " in line]
    assert spam == list(range(spam[0], spam[0] + len(spam)))  # consecutive: nothing lost or doubled


def test_follow_streams_until_the_job_ends(harness: Harness) -> None:
    job = harness.submit({"params": {"epochs": 3, "epoch_seconds": 0.3}})
    with harness.client.stream(
        "GET", f"/jobs/{job['id']}/logs", params={"follow": True, "tail": 10}
    ) as response:
        assert response.status_code == 200
        body = "".join(response.iter_text())
    assert '"epoch": 3' in body
    assert body.rstrip().endswith("removed")
    assert harness.job(job["id"])["status"] == "succeeded"


def test_health_reports_database_and_docker(harness: Harness) -> None:
    response = harness.client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["docker"]["ok"] is True


def test_unknown_job_is_404(harness: Harness) -> None:
    missing = "0" * 32
    for path in (f"/jobs/{missing}", f"/jobs/{missing}/logs", f"/jobs/{missing}/events"):
        response = harness.client.get(path)
        assert response.status_code == 404, path
        assert missing in response.json()["detail"]
    assert harness.client.post(f"/jobs/{missing}/cancel").status_code == 404
    assert harness.client.get("/jobs/not-an-id").status_code == 404
