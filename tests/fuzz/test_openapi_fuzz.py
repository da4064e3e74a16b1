"""Property-based fuzzing from the service's own OpenAPI schema (schemathesis, every check).

A real service (`run.py api`, SQLite, with an API token: multi-user mode) answers generated
requests, valid and invalid: none may be
a 5xx, every response must match the schema the service publishes, and the service must still
be healthy afterwards. Submitted jobs stay queued: the only live agent is one this test keeps
registered (a queue needs one to accept jobs), so nothing generated ever runs.

Bounded: TRAINYARD_FUZZ_EXAMPLES examples per operation and kind of data (default 100); the
number of requests sent is printed at the end (README: Security).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from agent.core.scheduling import Capacity
from agent.db.engine import Database
from agent.db.migrate import upgrade
from agent.db.queue import JobQueue
from agent.db.tokens import TokenStore
from tests.e2e.conftest import Proc, free_port, wait_for

# Workdir uploads are gzip bytes: generated like any binary body.
schemathesis.serializer.alias("application/gzip", "application/octet-stream")
# Rules no JSON Schema can state, so a schema-valid request may rightly be refused (4xx, with
# what to change): a workdir's body must hash to the digest in its path; a job's sizes have
# bounds ('1' is one byte of memory, below Docker's 6m), `params` a depth and key count, `env`
# a total size, and an image must be allowed and a workdir uploaded. Every other check runs:
# no 5xx, responses match the schema, invalid requests are refused, auth is enforced.
UNCHECKABLE = {
    "PUT /workdirs/{digest}": [positive_data_acceptance],
    "POST /jobs": [positive_data_acceptance],
    "POST /train": [positive_data_acceptance],
}
EXAMPLES = int(os.environ.get("TRAINYARD_FUZZ_EXAMPLES", "100"))
PHANTOM = "test-fuzz-phantom"
REQUESTS = {"count": 0}


@dataclass(frozen=True)
class Service:
    base: str
    token: str


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{root / 'data' / 'trainyard.db'}"
    (root / "data").mkdir()
    upgrade(url)
    db = Database(url)
    queue = JobQueue(db)
    queue.register_agent(
        PHANTOM, "nowhere", Capacity(slots=4, memory_bytes=64 * 2**30, cpus=64.0, gpu_ids=())
    )
    _info, token = TokenStore(db).create("fuzzer")  # multi-user mode: the hostile setting
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(2):
            queue.heartbeat(PHANTOM, engine_error=None)

    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    port = free_port()
    env = {
        "TRAINYARD_PORT": str(port),
        "TRAINYARD_HOST": "127.0.0.1",
        "TRAINYARD_DATA_DIR": str(root / "data"),
        "TRAINYARD_LOG_DIR": str(root / "logs"),
        "TRAINYARD_MAX_QUEUED": "200",
    }
    proc = Proc(["api"], env, root / "service.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{base}/health", timeout=2).status_code == 200, "service")
        yield Service(base, token)
    finally:
        stop.set()
        code = proc.stop()
        db.dispose()
        log = (root / "service.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-4000:]
        assert code in (0, -15), log[-2000:]


def operations(base: str) -> list[Any]:
    loaded = schemathesis.openapi.from_url(f"{base}/openapi.json")
    return [result.ok() for result in loaded.get_all_operations()]


def test_no_request_is_a_5xx_or_breaks_the_published_schema(service: Service) -> None:
    # One Hypothesis run per operation, driven here rather than by schemathesis' pytest
    # plugin (which does not work with pytest 9): every check, on valid data (schema-conforming
    # requests) and on invalid data (each must be refused with a 4xx).
    failures: list[str] = []
    runs = [(op, mode) for op in operations(service.base) for mode in GenerationMode]
    auth = {"Authorization": f"Bearer {service.token}"}
    for operation, mode in runs:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,  # the same requests every run: a failure reproduces
            database=None,
        )
        def fuzz(case: Any) -> None:
            # A query parameter with an empty name cannot be sent (the client drops it): the
            # "invalid" request that arrives is a valid one.
            assume(not (case.query and "" in case.query))
            REQUESTS["count"] += 1
            case.call_and_validate(
                base_url=service.base,
                headers=auth,
                timeout=30,
                excluded_checks=UNCHECKABLE.get(operation.label, []),
            )

        try:
            fuzz()
        except Unsatisfiable:  # no invalid request exists (an operation without parameters)
            continue
        except BaseException as exc:  # every operation's failures (groups too), then fail once
            if isinstance(exc, KeyboardInterrupt):
                raise
            failures.append(f"{operation.label} ({mode.value} data): {exc}"[:3000])
    assert not failures, "\n\n".join(failures)


def test_the_service_is_healthy_after_the_fuzzing(service: Service) -> None:
    health = httpx.get(f"{service.base}/health", timeout=5)
    assert health.status_code == 200, health.text
    auth = {"Authorization": f"Bearer {service.token}"}
    listing = httpx.get(f"{service.base}/jobs", params={"limit": 500}, headers=auth, timeout=10)
    assert listing.status_code == 200  # every stored job still renders
    print(f"\nfuzzing sent {REQUESTS['count']} requests; the service stayed healthy")
