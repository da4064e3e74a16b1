"""`POST /jobs` in its common case without FastAPI's per-request machinery.

A profile of the API under 16 clients (bench/README.md) put most of a submit's CPU in FastAPI's
dependency solving and in two hand-offs to worker threads (the user, then the route), while a
bare FastAPI route answers ~7,000 POSTs/s on this host. This middleware, the innermost, answers
a submit that needs nothing unusual: JSON that `JobSpec` accepts, no query string, at most a
well-formed Bearer token and Idempotency-Key. It does what the route and its dependencies do
and answers with the same status, headers and bytes: a submit from a user this process knows,
with nothing to read first, waits for its group commit in the event loop (no worker thread of
its own); any other takes one hand-off to a worker thread.

Anything else goes on, untouched, to the FastAPI route (the body it read is handed over as
the route would have received it), which then answers as it always has: every 401, 403, 415,
422 and its message come from one place. A refusal raised by the service itself (429 at the
bound, an image not allowed, no agent that could run it) is answered here by the app's own
handler, so that the submit is not tried twice. `tests/integration/test_fast_submit.py` sends
the same requests through both paths and compares the answers byte for byte.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from fastapi.security.utils import get_authorization_scheme_param
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.config import Settings
from agent.core.auth import InvalidToken
from agent.core.errors import TrainyardError
from agent.core.jobs import JobSpec
from agent.core.records import Job
from agent.service import TrainyardService
from api.auth import foreign_origin_refusal
from api.routes.jobs import MAX_IDEMPOTENCY_KEY, submitted
from api.schemas import JobOut

PATH = "/jobs"
_WANTED = {b"content-type", b"authorization", b"idempotency-key", b"origin"}
_KEY = re.compile(r"[\x21-\x7e]+")  # the route's Idempotency-Key rule
_JOB_OUT = TypeAdapter(JobOut)


@dataclass(frozen=True)
class _Ask:
    """What a submit asks for, once read off the request."""

    spec: JobSpec
    token: str | None
    idempotency_key: str | None
    origin: str | None


class FastSubmit:
    """ASGI middleware; `error_response` is the app's handler of a TrainyardError."""

    def __init__(self, app: ASGIApp, error_response: Callable[[TrainyardError], Response]) -> None:
        self.app = app
        self.error_response = error_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == PATH
            and not scope.get("query_string")
        ):
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive)
        ask = _ask(scope, body) if complete else None
        response = None
        if ask is not None:
            app_state = scope["app"].state
            response = await self._answer(app_state.service, app_state.settings, ask)
        if response is None:  # the route answers, from the same body
            await self.app(scope, _replay(body, receive), send)
            return
        await response(scope, receive, send)

    async def _answer(
        self, service: TrainyardService, settings: Settings, ask: _Ask
    ) -> Response | None:
        """`current_user` and `submit_job`; None: let the route answer. A submit from a user
        this process knows, with nothing to read before the queue's transaction, waits for its
        group commit in the event loop; any other takes one hand-off to a worker thread."""
        user = service.known_user(ask.token)
        if user is None or ask.idempotency_key is not None or ask.spec.workdir is not None:
            return await run_in_threadpool(self._submit, service, settings, ask)
        if user.token_id is None and foreign_origin_refusal(ask.origin, settings) is not None:
            return None
        try:
            job, created = await service.submit_async(ask.spec, user=user)
        except InvalidToken:
            return None  # revoked, or a token exists after all: the route's 401
        except TrainyardError as exc:
            return self.error_response(exc)
        return _created(job, created)

    def _submit(self, service: TrainyardService, settings: Settings, ask: _Ask) -> Response | None:
        """In a worker thread: `current_user` and `submit_job`. None: let the route answer."""
        # Who the token was when last seen (single-user mode's local user without one): the
        # submit's own transaction verifies it, so no read of the tokens per request.
        user = service.known_user(ask.token)
        unverified = user is not None
        if user is None:
            if ask.token is None:
                return None  # tokens exist: the route's 401, without the database
            try:
                user = service.authenticate(ask.token)
            except InvalidToken:
                return None
        if user.token_id is None and foreign_origin_refusal(ask.origin, settings) is not None:
            return None
        try:
            job, created = service.submit_or_get(
                ask.spec, user=user, idempotency_key=ask.idempotency_key, unverified=unverified
            )
        except InvalidToken:
            return None  # revoked, or a token exists after all: the route's 401
        except TrainyardError as exc:
            return self.error_response(exc)
        return _created(job, created)


def _created(job: Job, created: bool) -> Response:
    """The route's answer: 201 (or 200 for a replay) with the job and its Location."""
    response = Response(
        _JOB_OUT.dump_json(JobOut.of(job), by_alias=True),
        status_code=201,
        media_type="application/json",
    )
    submitted(response, job.id, created=created)
    return response


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole body (its size is bounded by the outer BodySizeLimit), and whether it came
    whole; a disconnect ends it early."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replay(body: bytes, receive: Receive) -> Receive:
    """The route's receive: the body already read, then the connection's own messages."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _ask(scope: Scope, body: bytes) -> _Ask | None:
    """The submit, when it is the common case; None for anything the route should judge."""
    headers: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in _WANTED:
            if name in headers:
                return None  # a header sent twice: the route decides which one counts
            headers[name] = value.decode("latin-1")
    content_type = headers.get(b"content-type", "")
    if content_type.partition(";")[0].strip().lower() != "application/json":
        return None
    token = None
    authorization = headers.get(b"authorization")
    if authorization is not None:
        scheme, token = get_authorization_scheme_param(authorization)
        if scheme.lower() != "bearer" or not token:
            return None
    key = headers.get(b"idempotency-key")
    if key is not None and not (len(key) <= MAX_IDEMPOTENCY_KEY and _KEY.fullmatch(key)):
        return None
    try:
        spec = JobSpec.model_validate(json.loads(body))  # as FastAPI reads a JSON body
    except (ValueError, ValidationError, RecursionError):
        return None
    return _Ask(spec, token, key, headers.get(b"origin"))
