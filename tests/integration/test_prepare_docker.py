"""The next job's container, created on the real engine while every slot is busy: the claim
starts that very container, with the job's limits, output and outputs directory; a job that
leaves the queue meanwhile leaves no container behind (on SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from agent.config import Settings
from tests.conftest import Harness

pytestmark = pytest.mark.docker


def _sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def created_ahead(h: Harness) -> list[dict[str, Any]]:
    return [c for c in h.containers() if c["State"] == "created"]


def wait(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout}s")
        time.sleep(0.05)


def one_busy_slot(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], database_url: str
) -> tuple[Harness, dict[str, Any]]:
    """An agent with one slot, held by a job that runs until /outputs/go exists."""
    h = start_harness(
        make_settings(database_url=database_url, max_concurrent_jobs=1, prepare_next=True)
    )
    busy = h.submit({"command": _sh("while [ ! -e /outputs/go ]; do sleep 0.05; done")})
    h.wait_for(busy["id"], lambda j: j["status"] == "running")
    return h, busy


def test_the_claim_starts_the_container_created_while_the_slot_was_busy(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], database_url: str
) -> None:
    h, busy = one_busy_slot(start_harness, make_settings, database_url)
    body = {
        "command": _sh(
            "echo hello from $TRAINYARD_JOB_ID; id -u; touch /outputs/made; ls /outputs"
        ),
        "resources": {"memory": "64m", "cpus": 0.25},
    }
    following = h.submit(body)
    wait(lambda: len(created_ahead(h)) == 1, "the next container created ahead")
    [ahead] = created_ahead(h)
    assert ahead["Labels"]["trainyard.job_id"] == following["id"]
    assert h.job(following["id"])["status"] == "queued"  # nothing claimed or held for it
    limits = h.docker.api.inspect_container(ahead["Id"])["HostConfig"]
    assert (limits["Memory"], limits["NanoCpus"], limits["NetworkMode"]) == (
        64 * 2**20,
        250_000_000,
        "none",
    )

    outputs = h.system.settings.outputs_dir / busy["id"]
    (outputs / "go").touch()  # the busy job ends: its slot frees
    job = h.wait_final(following["id"])
    assert job["status"] == "succeeded", job
    [attempt] = job["attempts"]
    assert attempt["container_id"] == ahead["Id"]
    log = h.logs(following["id"])
    assert "created while the slot was busy" in log
    assert f"hello from {following['id']}" in log
    assert "made" in log  # /outputs was the job's own, writable by the container's user
    assert (h.system.settings.outputs_dir / following["id"] / "made").exists()
    h.wait_final(busy["id"])
    h.wait_no_containers()


def test_a_job_cancelled_after_its_container_was_prepared_leaves_nothing(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], database_url: str
) -> None:
    h, busy = one_busy_slot(start_harness, make_settings, database_url)
    doomed = h.submit({"command": ["true"]})
    wait(lambda: len(created_ahead(h)) == 1, "the next container created ahead")
    assert h.client.post(f"/jobs/{doomed['id']}/cancel").status_code in (200, 202)
    (h.system.settings.outputs_dir / busy["id"] / "go").touch()
    assert h.wait_final(busy["id"])["status"] == "succeeded"
    h.wait_no_containers()  # the claim found nothing: the prepared container went
    assert h.wait_final(doomed["id"])["status"] == "cancelled"
    assert not (h.system.settings.outputs_dir / doomed["id"]).exists()
