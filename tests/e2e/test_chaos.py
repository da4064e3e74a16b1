"""Chaos: kill the agent with SIGKILL at random moments while jobs run; nothing is lost.

Bounded in time. Prints the figures (kills survived, jobs, lost, duplicated, leaked).
"""

from __future__ import annotations

import random
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import Settings
from tests.conftest import FINAL, Harness
from tests.e2e.conftest import Proc, agent_env

pytestmark = pytest.mark.docker

KILLS = 6
CHAOS_SECONDS = 60


def _jobs() -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(7)
    jobs: list[tuple[str, dict[str, Any]]] = []
    for _ in range(16):
        epochs = rng.randint(2, 4)
        params = {"epochs": epochs, "epoch_seconds": rng.choice([0.2, 0.4, 0.6])}
        jobs.append(("succeeded", {"params": params}))
    for _ in range(4):  # fail once at epoch 2, then resume and finish
        params = {"epochs": 3, "epoch_seconds": 0.3, "fail_at_epoch": 2, "fail_attempts": 1}
        jobs.append(("succeeded", {"params": params, "max_retries": 2}))
    for _ in range(4):
        jobs.append(("failed", {"params": {"exit_code": 3}, "max_retries": 0}))
    rng.shuffle(jobs)
    return jobs


def test_sigkilled_agent_loses_nothing_duplicates_nothing_leaks_nothing(
    tmp_path: Path,
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    database_url: str,
) -> None:
    settings = make_settings(database_url=database_url, max_queued=100)
    api = start_harness(settings, with_agent=False)
    env = agent_env(
        tmp_path,
        settings.agent_id,
        TRAINYARD_DATABASE_URL=database_url,
        TRAINYARD_MAX_CONCURRENT_JOBS="3",
        TRAINYARD_DEFAULT_CPUS="0.5",
        TRAINYARD_RETRY_BACKOFF_SECONDS="0.2",
        TRAINYARD_POLL_INTERVAL="0.2",
    )
    env["TRAINYARD_LOG_DIR"] = str(settings.log_dir)
    env["TRAINYARD_DATA_DIR"] = str(settings.data_dir)
    expected = {}
    for want, body in _jobs():
        expected[api.submit(body)["id"]] = (want, body)

    rng = random.Random(11)
    log = tmp_path / "agent.log"
    agent = Proc(["agent"], env, log)
    kills = 0
    started = time.monotonic()
    try:
        while kills < KILLS and time.monotonic() - started < CHAOS_SECONDS:
            time.sleep(rng.uniform(1.0, 4.0))
            agent.stop(signal.SIGKILL)
            kills += 1
            agent = Proc(["agent"], env, log)
        deadline = time.monotonic() + 180
        while True:
            jobs = api.client.get("/jobs", params={"limit": 500}).json()["items"]
            if all(j["status"] in FINAL for j in jobs):
                break
            assert time.monotonic() < deadline, [j["status"] for j in jobs]
            time.sleep(0.3)
    finally:
        agent.stop(signal.SIGTERM)

    lost = duplicated = wrong = 0
    for job_id, (want, body) in expected.items():
        job = api.job(job_id)
        succeeded = [a for a in job["attempts"] if a["outcome"] == "succeeded"]
        duplicated += len(succeeded) > 1
        wrong += job["status"] != want
        if job["status"] != "succeeded":
            continue
        text = api.logs(job_id, tail=100_000)
        epochs = [int(m) for m in re.findall(r'"epoch": (\d+)', text)]
        if (
            epochs != list(range(1, body["params"]["epochs"] + 1))
            or text.count("training complete") != 1
        ):
            lost += 1
            print(f"job {job_id}: epochs seen {epochs}")
    leaked = len(api.containers())
    print(
        f"\nchaos: kills survived={kills} jobs={len(expected)} lost={lost} "
        f"duplicated={duplicated} wrong_final_state={wrong} leaked={leaked}"
    )
    assert kills == KILLS
    assert (lost, duplicated, wrong, leaked) == (0, 0, 0, 0)
