"""Every attempt ends with one outcome; only failures worth it are retried (real engine)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.config import Settings
from tests.conftest import Harness

pytestmark = pytest.mark.docker


@pytest.fixture
def h(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], sqlite_url: str
) -> Harness:
    return start_harness(make_settings(database_url=sqlite_url))


def outcomes(job: dict[str, object]) -> list[object]:
    return [a["outcome"] for a in job["attempts"]]  # type: ignore[index, union-attr]


def test_memory_limit_exceeded_is_oom_and_final(h: Harness) -> None:
    job = h.submit(
        {"params": {"allocate_mb": 400}, "resources": {"memory": "64m"}, "max_retries": 3}
    )
    job = h.wait_final(job["id"])
    assert job["status"] == "failed"
    assert outcomes(job) == ["oom"]  # never retried by default
    assert job["exit_code"] == 137
    assert job["attempts"][0]["oom_killed"] is True
    assert "memory limit of 64m" in job["reason"]
    h.wait_no_containers()


def test_oom_is_retried_when_the_job_asks(h: Harness) -> None:
    job = h.submit(
        {
            "params": {"allocate_mb": 400},
            "resources": {"memory": "64m"},
            "max_retries": 1,
            "retry_on": ["oom"],
        }
    )
    job = h.wait_final(job["id"])
    assert outcomes(job) == ["oom", "oom"]
    assert job["retries_used"] == 1


def test_cuda_out_of_memory_is_recognised_and_final_unless_the_job_opts_in(h: Harness) -> None:
    # The same batch size fails again: not retried by default, whatever max_retries says.
    job = h.submit({"params": {"epochs": 3, "cuda_oom_at_epoch": 2}, "max_retries": 1})
    job = h.wait_final(job["id"])
    assert job["status"] == "failed"
    assert outcomes(job) == ["cuda_oom"]
    assert "CUDA out-of-memory" in job["reason"]
    assert "last stderr:" in job["reason"]  # the error itself, without opening the log
    opted_in = h.submit(
        {
            "params": {"epochs": 3, "cuda_oom_at_epoch": 2},
            "max_retries": 1,
            "retry_on": ["cuda_oom"],
        }
    )
    assert outcomes(h.wait_final(opted_in["id"])) == ["cuda_oom", "cuda_oom"]


def test_user_error_is_retried_and_the_retry_resumes_from_the_checkpoint(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    h = start_harness(make_settings(database_url=sqlite_url, retry_backoff_seconds=2))
    job = h.submit(
        {
            "params": {"epochs": 5, "fail_at_epoch": 3, "fail_attempts": 1, "fail_exit_code": 9},
            "max_retries": 2,
        }
    )
    waiting = h.wait_for(job["id"], lambda j: j["status"] == "queued" and j["attempt_count"] == 1)
    assert waiting["next_attempt_at"] is not None  # the retry is visible while it waits
    assert waiting["outcome"] == "user_error"
    assert waiting["exit_code"] == 9

    job = h.wait_final(job["id"])
    assert job["status"] == "succeeded"
    assert outcomes(job) == ["user_error", "succeeded"]
    assert job["retries_used"] == 1
    log = h.logs(job["id"])
    assert "resuming from checkpoint: epoch 2 of 5 complete" in log
    epochs = [
        line.split('"epoch": ')[1].split(",")[0] for line in log.splitlines() if '"epoch":' in line
    ]
    assert epochs == ["1", "2", "3", "4", "5"]  # attempt 2 started at epoch 3
    attempt2 = log[log.index("[attempt 2] claimed") :]
    assert '"epoch": 3' in attempt2 and '"epoch": 2' not in attempt2
    events = h.client.get(f"/jobs/{job['id']}/events").json()
    [retry] = [e for e in events if e["kind"] == "retry_scheduled"]
    assert "exit code 9" in retry["message"] and "retry 1 of 2" in retry["message"]


def test_non_retryable_exit_codes_end_the_job_at_once(h: Harness) -> None:
    job = h.submit({"params": {"exit_code": 2}, "max_retries": 3, "non_retryable_exit_codes": [2]})
    job = h.wait_final(job["id"])
    assert job["status"] == "failed"
    assert outcomes(job) == ["user_error"]


def test_timeout_is_final_unless_the_job_asks(h: Harness) -> None:
    final = h.submit({"params": {"sleep_seconds": 60}, "timeout_seconds": 1, "max_retries": 2})
    retried = h.submit(
        {
            "params": {"sleep_seconds": 60},
            "timeout_seconds": 1,
            "max_retries": 1,
            "retry_on": ["timeout"],
        }
    )
    assert outcomes(h.wait_final(final["id"])) == ["timeout"]
    assert outcomes(h.wait_final(retried["id"])) == ["timeout", "timeout"]


def test_a_container_removed_behind_the_agents_back_is_an_infra_error(h: Harness) -> None:
    job = h.submit({"params": {"sleep_seconds": 60}, "max_retries": 0})
    running = h.wait_for(job["id"], lambda j: j["status"] == "running")
    h.docker.api.remove_container(running["attempts"][0]["container_id"], force=True)
    job = h.wait_for(job["id"], lambda j: j["attempt_count"] == 2)
    first = job["attempts"][0]
    assert first["outcome"] == "infra_error"
    assert job["retries_used"] == 0  # the platform's failure, not the job's
    h.client.post(f"/jobs/{job['id']}/cancel")
    assert h.wait_final(job["id"])["status"] == "cancelled"
