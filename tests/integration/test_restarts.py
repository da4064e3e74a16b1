"""Jobs survive restarts of the service and of the agent."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.config import Settings
from tests.conftest import Harness

pytestmark = pytest.mark.docker


def test_queued_jobs_survive_a_restart(
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    database_url: str,
) -> None:
    settings = make_settings(database_url=database_url)
    api = start_harness(settings, with_agent=False)
    job = api.submit({"params": {"epochs": 2}})
    api.client.close()
    api.system.close()

    again = start_harness(settings)
    done = again.wait_final(job["id"])
    assert done["status"] == "succeeded"
    assert done["created_at"] == job["created_at"]


def test_stopping_the_agent_mid_run_requeues_and_the_next_attempt_resumes(
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    database_url: str,
) -> None:
    settings = make_settings(database_url=database_url)
    first = start_harness(settings)
    job = first.submit({"params": {"epochs": 6, "epoch_seconds": 0.4}, "max_retries": 0})
    first.wait_for(job["id"], lambda j: '"epoch": 2' in first.logs(j["id"]))
    first.client.close()
    first.system.close(timeout=30)  # stops the container (SIGTERM) and requeues the job

    second = start_harness(settings)
    done = second.wait_final(job["id"])
    assert done["status"] == "succeeded", done
    assert [a["outcome"] for a in done["attempts"]] == ["infra_error", "succeeded"]
    assert done["retries_used"] == 0  # a platform failure does not spend max_retries
    assert "agent shut down" in done["attempts"][0]["reason"]
    log = second.logs(job["id"])
    assert "received SIGTERM, checkpoint saved" in log
    assert "resuming from checkpoint" in log  # same /outputs, TRAINYARD_RESUME=1
    epochs = [line for line in log.splitlines() if '"epochs": 6' in line]
    assert len(epochs) == 6  # every epoch exactly once across both attempts
