"""GPU jobs get exactly their device ids through Docker's real device-request path.

`make test` starts dockerd with a stand-in `nvidia-container-runtime-hook` on its PATH (no GPUs
here), so the engine registers its NVIDIA driver and sets NVIDIA_VISIBLE_DEVICES from the ids.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.config import Settings
from tests.conftest import Harness

pytestmark = pytest.mark.docker

SHOW = ["sh", "-c", "echo visible=$NVIDIA_VISIBLE_DEVICES; sleep 1"]


def test_each_gpu_job_gets_exactly_its_device_ids(
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    sqlite_url: str,
) -> None:
    h = start_harness(make_settings(database_url=sqlite_url, gpus="0,1,2,3", max_concurrent_jobs=3))
    two = h.submit({"command": SHOW, "resources": {"gpus": 2}})
    one = h.submit({"command": SHOW, "resources": {"gpus": 1}})
    none = h.submit({"command": SHOW})

    running = h.wait_for(two["id"], lambda j: j["status"] in ("running", "succeeded"))
    if running["status"] == "running":
        attrs = h.docker.api.inspect_container(running["attempts"][0]["container_id"])
        [request] = attrs["HostConfig"]["DeviceRequests"]
        assert request["DeviceIDs"] == running["attempts"][0]["gpu_ids"]
        assert request["Count"] == 0  # ids, never a count
        assert request["Capabilities"] == [["gpu"]]

    seen: dict[str, set[str]] = {}
    for job in (two, one, none):
        done = h.wait_final(job["id"])
        assert done["status"] == "succeeded", done
        ids = done["attempts"][0]["gpu_ids"]
        assert len(ids) == job["resources"]["gpus"]
        visible = [
            line.split("visible=", 1)[1]
            for line in h.logs(job["id"]).splitlines()
            if "stdout visible=" in line
        ]
        assert visible == [",".join(ids) or "void"]
        seen[job["id"]] = set(ids)
    assert seen[two["id"]].isdisjoint(seen[one["id"]])  # they ran at once: no GPU shared
    assert seen[two["id"]] | seen[one["id"]] <= {"0", "1", "2", "3"}
    h.wait_no_containers()


def test_more_gpus_than_the_agent_has_is_refused(
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    sqlite_url: str,
) -> None:
    h = start_harness(make_settings(database_url=sqlite_url, gpus="0,1"))
    response = h.client.post("/jobs", json={"resources": {"gpus": 3}})
    assert response.status_code == 422
    body = response.json()
    assert "resources.gpus 3 is more than any agent has (largest: 2)" in body["message"]
    assert body["detail"][0]["loc"] == ["body", "resources", "gpus"]
