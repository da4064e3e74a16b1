"""`POST /jobs` answers the same through the fast path (api/fastsubmit.py) as through its
FastAPI route: one System, two apps (one with the fast path, one without), the same requests
to both, the answers compared byte for byte. A new job's id and times differ between two
submits, so those are swapped in before comparing; everything else must match."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agent.config import Settings
from agent.db.engine import Database
from agent.db.tokens import TokenStore
from agent.metrics import REGISTRY
from agent.wiring import System
from api import fastsubmit
from api.app import create_app
from tests.conftest import reset_postgres

SPEC = {"name": "fast", "command": ["true"], "resources": {"memory": "256m", "cpus": 0.5}}
TIMES = re.compile(rb'"(created_at|updated_at)":"([^"]*)"')


class Pair:
    def __init__(self, system: System, answered: list[bool]) -> None:
        self.system = system
        self.fast = TestClient(create_app(system.settings, system_=system))
        self.slow = TestClient(create_app(system.settings, system_=system, fast_submit=False))
        self.answered = answered  # one entry per request the fast path looked at: did it answer?

    def both(self, **request: Any) -> tuple[Any, Any]:
        self.answered.clear()
        fast = self.fast.post("/jobs", **request)
        slow = self.slow.post("/jobs", **request)
        return fast, slow


@pytest.fixture
def pair(
    make_settings: Callable[..., Settings], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pair]:
    answered: list[bool] = []
    answer = fastsubmit.FastSubmit._answer

    async def spying(self: fastsubmit.FastSubmit, *args: Any) -> Any:
        response = await answer(self, *args)
        answered.append(response is not None)
        return response

    monkeypatch.setattr(fastsubmit.FastSubmit, "_answer", spying)
    settings = make_settings(
        database_url=database_url, max_queued=10, allowed_images="trainyard/*,img/*"
    )
    system = System.build(settings, with_agent=False)
    system.start()
    pair = Pair(system, answered)
    yield pair
    pair.fast.close()
    pair.slow.close()
    system.close(timeout=10)
    if not database_url.startswith("sqlite"):
        reset_postgres(database_url)  # shared by the session: leave no token behind


def _same_new_job(fast: Any, slow: Any) -> None:
    """Two 201s for two new jobs: identical once the slow one's id and times are the fast
    one's."""
    assert fast.status_code == slow.status_code == 201, (fast.text, slow.text)
    fast_id, slow_id = fast.json()["id"], slow.json()["id"]
    times = dict(TIMES.findall(fast.content))
    body = slow.content.replace(slow_id.encode(), fast_id.encode())
    body = TIMES.sub(lambda m: b'"%s":"%s"' % (m[1], times[m[1]]), body)
    assert len(times) == 2, fast.content
    assert body == fast.content
    headers = {k: v.replace(slow_id, fast_id) for k, v in slow.headers.items()}
    assert headers == dict(fast.headers)


def _same(fast: Any, slow: Any, status: int) -> None:
    assert fast.status_code == slow.status_code == status, (fast.text, slow.text)
    assert fast.content == slow.content
    assert dict(fast.headers) == dict(slow.headers)


def test_a_plain_submit_is_answered_by_the_fast_path_exactly_as_by_the_route(
    pair: Pair,
) -> None:
    for body in [
        SPEC,
        {},
        {**SPEC, "env": {"SECRET": "x"}, "labels": {"team": "a"}, "params": {"lr": 0.1}},
        {**SPEC, "priority": 5, "max_retries": 2, "timeout_seconds": 60},
    ]:
        fast, slow = pair.both(json=body)
        assert pair.answered == [True]
        _same_new_job(fast, slow)
        assert fast.headers["location"] == f"/jobs/{fast.json()['id']}"
        assert fast.json()["status"] == "queued"
    jobs = pair.fast.get("/jobs").json()
    assert jobs["total"] == 8


def test_an_idempotent_replay_is_the_same_200_on_both(pair: Pair) -> None:
    first = pair.slow.post("/jobs", json=SPEC, headers={"Idempotency-Key": "run-7"})
    assert first.status_code == 201
    fast, slow = pair.both(json=SPEC, headers={"Idempotency-Key": "run-7"})
    assert pair.answered == [True]
    _same(fast, slow, 200)
    assert fast.headers["idempotent-replayed"] == "true"
    assert fast.json()["id"] == first.json()["id"]
    assert pair.fast.get("/jobs").json()["total"] == 1


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        ({"json": {**SPEC, "resources": {"memory": "lots"}}}, 422),
        ({"json": {**SPEC, "priorty": 5}}, 422),
        ({"json": [SPEC]}, 422),
        ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 422),
        ({"content": b"", "headers": {"Content-Type": "application/json"}}, 422),
        ({"content": json.dumps(SPEC), "headers": {"Content-Type": "text/plain"}}, 422),
        ({"content": b"[" * 100_000, "headers": {"Content-Type": "application/json"}}, 400),
        ({"json": SPEC, "params": {"x": "1"}}, 422),
        ({"json": SPEC, "headers": {"Idempotency-Key": "has space"}}, 422),
        ({"json": SPEC, "headers": {"Idempotency-Key": "k" * 129}}, 422),
        ({"json": SPEC, "headers": {"Authorization": "Basic dXNlcjpwdw=="}}, 401),
        ({"json": SPEC, "headers": {"Authorization": "Bearer not-a-token"}}, 401),
        ({"json": SPEC, "headers": {"Origin": "https://evil.example"}}, 403),
        ({"json": {**SPEC, "image": "elsewhere/img:1"}}, 422),  # refused by the service
        ({"json": {**SPEC, "resources": {"memory": "100t"}}}, 422),  # no agent could run it
    ],
)
def test_what_the_fast_path_does_not_accept_gets_the_routes_own_answer(
    pair: Pair, request_: dict[str, Any], status: int
) -> None:
    fast, slow = pair.both(**request_)
    _same(fast, slow, status)
    assert pair.fast.get("/jobs").json()["total"] == 0


def test_a_header_sent_twice_is_left_to_the_route(pair: Pair) -> None:
    pair.answered.clear()
    fast = pair.fast.post("/jobs", json=SPEC, headers=[("Idempotency-Key", k) for k in "ab"])
    slow = pair.slow.post("/jobs", json=SPEC, headers=[("Idempotency-Key", k) for k in "cd"])
    assert pair.answered == []  # not even looked at
    _same_new_job(fast, slow)


def test_the_queue_bound_is_the_same_429_on_both(pair: Pair) -> None:
    for _ in range(10):
        assert pair.fast.post("/jobs", json=SPEC).status_code == 201
    fast, slow = pair.both(json=SPEC)
    assert pair.answered == [True]  # answered by the app's own handler, not tried twice
    _same(fast, slow, 429)
    assert fast.headers["retry-after"]
    assert pair.fast.get("/jobs").json()["total"] == 10


def test_with_tokens_the_fast_path_acts_as_the_tokens_user(pair: Pair) -> None:
    _info, alice = pair.system.service.tokens.create("alice")
    _info, bob = pair.system.service.tokens.create("bob")
    as_alice = {"Authorization": f"Bearer {alice}"}
    fast, slow = pair.both(json=SPEC, headers=as_alice)
    assert pair.answered == [True]
    _same_new_job(fast, slow)
    # Both jobs are Alice's: Bob sees neither. Without a token there is no answer but 401.
    assert pair.fast.get("/jobs", headers=as_alice).json()["total"] == 2
    assert pair.fast.get("/jobs", headers={"Authorization": f"Bearer {bob}"}).json()["total"] == 0
    fast, slow = pair.both(json=SPEC)
    _same(fast, slow, 401)
    # Revoked by the store (as `run.py token revoke` would, in another process): the fast
    # path still knows Alice's token, but the submit's transaction refuses it.
    pair.system.service.tokens.revoke(alice)
    assert pair.system.service.known_user(alice) is not None
    before = _rejected()
    fast, slow = pair.both(json=SPEC, headers=as_alice)
    assert pair.answered == [False]
    _same(fast, slow, 401)
    assert _rejected() == before  # credentials refused, not a job: as the route counts it
    assert pair.system.service.known_user(alice) is None  # forgotten: asked afresh next time
    listed = pair.fast.get("/jobs", headers={"Authorization": f"Bearer {bob}"}).json()
    assert listed["total"] == 0


def _rejected() -> dict[str, float]:
    """trainyard_jobs_rejected by reason, as /metrics would show it."""
    return {
        sample.labels["reason"]: sample.value
        for metric in REGISTRY.collect()
        if metric.name == "trainyard_jobs_rejected"
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


def test_a_refused_job_is_counted_once_by_its_reason(pair: Pair) -> None:
    before = _rejected()
    fast, slow = pair.both(json={**SPEC, "image": "elsewhere/img:1"})
    _same(fast, slow, 422)
    after = _rejected()
    assert after.get("InvalidJobSpec", 0) - before.get("InvalidJobSpec", 0) == 2, after


def _token_made_elsewhere(pair: Pair) -> None:
    db = Database(pair.system.settings.resolved_database_url)
    TokenStore(db).create("alice")
    db.dispose()


def test_a_token_made_elsewhere_ends_single_user_mode_at_the_next_submit(pair: Pair) -> None:
    """The fast path takes a tokenless submit as single-user mode's local user and lets the
    submit's own transaction check that no token exists. Once another process (here: a store
    of its own) has made one, every tokenless submit is the route's 401, whatever else is wrong
    with it, and nothing is queued."""
    replayed = pair.fast.post("/jobs", json=SPEC, headers={"Idempotency-Key": "k1"})
    assert replayed.status_code == 201
    _token_made_elsewhere(pair)
    assert not pair.system.service.tokens_known_to_exist
    pair.answered.clear()
    fast = pair.fast.post("/jobs", json=SPEC)
    assert pair.answered == [False]  # the transaction found the token: the route answered
    assert fast.status_code == 401, fast.text
    assert pair.system.service.tokens_known_to_exist
    for request in [
        {"json": SPEC},
        {"json": SPEC, "headers": {"Idempotency-Key": "k1"}},  # no replay without a token
        {"json": {**SPEC, "image": "elsewhere/img:1"}},  # 401 before 422
        {"json": {**SPEC, "resources": {"memory": "lots"}}},
    ]:
        fast, slow = pair.both(**request)
        _same(fast, slow, 401)
    assert pair.system.queue.stats().total == 1


def test_a_refusal_in_single_user_mode_is_401_once_a_token_exists(pair: Pair) -> None:
    """The check the transaction would have made, made before any refusal is answered: an
    unauthenticated caller learns nothing about the queue or the spec rules."""
    _token_made_elsewhere(pair)
    fast = pair.fast.post("/jobs", json={**SPEC, "image": "elsewhere/img:1"})
    assert fast.status_code == 401, fast.text
