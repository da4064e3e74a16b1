"""What the agent enforces on a running container besides memory and CPU, on the real engine:
a stall timeout, a disk budget, a read-only root filesystem, a job's own stop grace."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest

from agent.config import Settings
from tests.conftest import Harness

pytestmark = pytest.mark.docker


@pytest.fixture
def h(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], sqlite_url: str
) -> Harness:
    return start_harness(
        make_settings(database_url=sqlite_url, disk_check_seconds=0.5, stop_grace_seconds=30)
    )


def test_a_silent_job_is_stopped_as_stalled_with_its_last_lines_in_the_reason(
    h: Harness,
) -> None:
    code = "import time; print('loading shard 7', flush=True); time.sleep(300)"
    job = h.submit({"command": ["python3", "-c", code], "stall_timeout_seconds": 2})
    job = h.wait_for(job["id"], lambda j: j["attempts"] and j["attempts"][0]["outcome"])
    first = job["attempts"][0]
    assert first["outcome"] == "stalled"
    assert "no output for 2s" in first["reason"]
    assert "last output: loading shard 7" in first["reason"]
    # With an init process, the unhandled SIGTERM ended python at once (not after 30 s).
    assert "the process exited on SIGTERM" in first["reason"]
    h.client.post(f"/jobs/{job['id']}/cancel")  # it is retried on the platform's budget
    h.wait_final(job["id"])
    h.wait_no_containers()


def test_a_job_that_writes_past_its_disk_budget_is_stopped_as_disk_exceeded(h: Harness) -> None:
    code = (
        "import os, time\n"
        "with open('/outputs/big.bin', 'wb') as f:\n"
        "    f.write(os.urandom(3 * 2**20)); f.flush(); os.fsync(f.fileno())\n"
        "with open('/tmp/scratch.bin', 'wb') as f:\n"
        "    f.write(os.urandom(3 * 2**20)); f.flush(); os.fsync(f.fileno())\n"
        "time.sleep(300)\n"
    )
    job = h.submit({"command": ["python3", "-c", code], "resources": {"disk": "4m"}})
    job = h.wait_final(job["id"], timeout=90)
    assert job["status"] == "failed"
    assert job["outcome"] == "disk_exceeded"
    assert "of 4 MiB" in job["reason"] and "resources.disk" in job["reason"]
    assert "in /outputs" in job["reason"] and "in the container's filesystem" in job["reason"]
    h.wait_no_containers()


def test_a_job_within_its_disk_budget_succeeds(h: Harness) -> None:
    code = "open('/outputs/small.bin', 'wb').write(b'x' * 1000); import time; time.sleep(2)"
    job = h.submit({"command": ["python3", "-c", code], "resources": {"disk": "50m"}})
    assert h.wait_final(job["id"])["status"] == "succeeded"


def test_a_jobs_own_stop_grace_applies_to_a_process_that_ignores_sigterm(h: Harness) -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(300)\n"
    )
    job = h.submit({"command": ["python3", "-c", code], "stop_grace_seconds": 1})
    h.wait_for(job["id"], lambda j: j["status"] == "running" and "ready" in h.logs(j["id"]))
    h.client.post(f"/jobs/{job['id']}/cancel")
    job = h.wait_final(job["id"])
    assert (job["outcome"], job["exit_code"]) == ("cancelled", 137)
    assert "killed (SIGKILL) after the grace period" in job["reason"]
    assert "SIGKILL after 1s" in h.logs(job["id"])  # the job's 1 s, not the agent's 30 s
    h.wait_no_containers()


def test_with_a_read_only_root_only_tmp_and_outputs_are_writable(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    h = start_harness(make_settings(database_url=sqlite_url, read_only_rootfs=True))
    code = (
        "import os\n"
        "for path in ('/tmp/a', '/outputs/b', '/home/c', '/usr/local/d'):\n"
        "    try:\n"
        "        open(path, 'w').write('x'); print('wrote', path)\n"
        "    except OSError as exc:\n"
        "        print('refused', path, exc.errno)\n"
    )
    job = h.submit({"command": ["python3", "-c", code]})
    assert h.wait_final(job["id"])["status"] == "succeeded"
    log = h.logs(job["id"])
    assert "wrote /tmp/a" in log and "wrote /outputs/b" in log
    assert "refused /home/c 30" in log and "refused /usr/local/d 30" in log  # EROFS
    assert "read-only root filesystem" in log


SLEEP_LOOP = "import time\nprint('training', flush=True)\nwhile True:\n    time.sleep(0.5)\n"


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_a_python_loop_without_a_handler_stops_on_sigterm_not_after_the_grace(
    h: Harness, how: str
) -> None:
    """`python3 -c` with a sleep loop installs no SIGTERM handler; as PID 1 it would ignore
    SIGTERM and run on for the whole grace period (30 s here) before SIGKILL. Under the init
    process it ends on the SIGTERM itself: exit 143, and the reason says so."""
    body: dict[str, object] = {"command": ["python3", "-c", SLEEP_LOOP], "max_retries": 0}
    if how == "timeout":
        body["timeout_seconds"] = 2
    job = h.submit(body)
    h.wait_for(job["id"], lambda j: j["status"] == "running" and "training" in h.logs(j["id"]))
    if how == "cancel":
        h.client.post(f"/jobs/{job['id']}/cancel")
    done = h.wait_final(job["id"])
    attempt = done["attempts"][0]
    assert attempt["outcome"] == ("cancelled" if how == "cancel" else "timeout")
    assert attempt["exit_code"] == 143  # SIGTERM ended it; 137 would mean the grace ran out
    assert "the process exited on SIGTERM" in attempt["reason"]
    events = h.client.get(f"/jobs/{job['id']}/events").json()
    kind = "cancel_requested" if how == "cancel" else "started"
    asked = next(e["at"] for e in events if e["kind"] == kind)
    stopped = datetime.fromisoformat(attempt["finished_at"]) - datetime.fromisoformat(asked)
    # Far inside the 30 s grace: the stop did not wait it out (a timeout counts from the start).
    assert stopped.total_seconds() < (15 if how == "cancel" else 17)
    h.wait_no_containers()
