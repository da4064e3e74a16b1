"""Agent upgrades do not kill training: an agent stopped in detach mode leaves its running
container alone, and the next agent with its id re-attaches it — no line lost or doubled."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import Settings
from tests.conftest import Harness
from tests.e2e.conftest import Proc, agent_env

pytestmark = pytest.mark.docker

LINES = 150
SCRIPT = f"for i in $(seq 1 {LINES}); do echo n $i; sleep 0.04; done"


@pytest.mark.parametrize(
    ("how", "extra_env"),
    [
        (signal.SIGTERM, {"TRAINYARD_DETACH_ON_STOP": "true"}),
        (signal.SIGUSR1, {}),  # detaches whatever the setting says
    ],
    ids=["sigterm-with-detach-on-stop", "sigusr1"],
)
def test_an_upgraded_agent_finishes_the_job_once_untouched(
    tmp_path: Path,
    procs: list[Proc],
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    how: signal.Signals,
    extra_env: dict[str, str],
) -> None:
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'data' / 'trainyard.db'}")
    api = start_harness(settings, with_agent=False)
    env = agent_env(tmp_path, settings.agent_id, TRAINYARD_POLL_INTERVAL="0.2", **extra_env)
    agent = Proc(["agent"], env, tmp_path / "agent.log")
    procs.append(agent)
    job = api.submit({"command": ["sh", "-c", SCRIPT], "max_retries": 0})
    api.wait_for(job["id"], lambda j: "stdout n 20" in api.logs(j["id"]))

    assert agent.stop(how) == 0  # the old agent exits cleanly, at once
    [container] = api.containers()
    assert container["State"] == "running"  # the training was not touched
    assert api.job(job["id"])["status"] == "running"
    assert "detach mode" in api.logs(job["id"])

    upgraded = Proc(["agent"], env, tmp_path / "agent.log")
    procs.append(upgraded)
    done = api.wait_final(job["id"], timeout=90)
    assert done["status"] == "succeeded", done
    [attempt] = done["attempts"]  # finished once: no requeue, no second container
    assert attempt["container_id"] == container["Id"]
    log = api.logs(job["id"], tail=LINES + 100)
    numbers = [int(line.rsplit(" ", 1)[1]) for line in log.splitlines() if " stdout n " in line]
    assert numbers == list(range(1, LINES + 1))  # no line lost, none doubled
    assert f"re-attached to container {container['Id'][:12]} (running)" in log
    api.wait_no_containers()
    assert upgraded.stop(signal.SIGTERM) == 0
