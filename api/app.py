"""create_app(settings): lifespan, routers, error handlers, the request-body bound."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.config import Settings
from agent.core.errors import InvalidJobSpec, QueueFull, TrainyardError
from agent.core.jobs import JobSpec, Resources
from agent.wiring import System
from api.auth import add_security_middleware, check_startup, current_user, job_access
from api.fastsubmit import FastSubmit
from api.routes import dashboard, jobs, metrics, outputs, system, train, workdirs
from api.schemas import error_responses

log = logging.getLogger("trainyard.api")


def api_worker_app() -> FastAPI:
    """One worker process of `run.py api` with TRAINYARD_API_WORKERS above 1 (uvicorn imports
    it by name in each): the settings come from the environment it inherited."""
    return create_app(Settings(mode="api"))


def create_app(
    settings: Settings | None = None, *, system_: System | None = None, fast_submit: bool = True
) -> FastAPI:
    """The API. With `system_` given the caller owns its lifecycle; else the app builds one.
    `fast_submit=False` leaves every `POST /jobs` to its FastAPI route (tests compare both)."""
    settings = settings or (system_.settings if system_ else Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = system_ is None
        built = system_ or System.build(settings, with_agent=settings.mode == "all")
        app.state.service = built.service
        check_startup(built.service, settings)  # beyond loopback only with tokens
        if owned:
            built.start()
        try:
            yield
        finally:
            if owned:
                built.close(timeout=settings.stop_grace_seconds + 10)

    app = FastAPI(
        title="Trainyard",
        version="0.1.0",
        description="Queue ML training jobs; an agent runs each in a limited Docker container.",
        lifespan=lifespan,
        dependencies=[Depends(known_query_only)],
    )
    app.state.settings = settings
    if system_ is not None:
        app.state.service = system_.service
    # Every route of these needs a user, and one with a job id in its path a job the user may
    # see (404 otherwise). The system router's /health and /metrics stay open (no job data).
    owned_jobs = [Depends(job_access)]
    errors = error_responses(400, 401, 403, 404, 409, 413, 429, 502, 503)
    app.include_router(jobs.router, dependencies=owned_jobs, responses=errors)
    app.include_router(metrics.router, dependencies=owned_jobs, responses=errors)
    app.include_router(outputs.router, dependencies=owned_jobs, responses=errors)
    app.include_router(train.router, dependencies=owned_jobs, responses=errors)
    app.include_router(workdirs.router, dependencies=[Depends(current_user)], responses=errors)
    app.include_router(system.router)
    app.include_router(dashboard.router)  # GET / and /ui/*: public files, no job data
    app.add_exception_handler(TrainyardError, _trainyard_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    if fast_submit:  # innermost: inside the Host allowlist, CORS and the body bound
        app.add_middleware(FastSubmit, error_response=trainyard_error_response)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        larger={"/workdirs/": (settings.workdir_max_bytes, "TRAINYARD_WORKDIR_MAX_BYTES")},
    )
    add_security_middleware(app, settings)  # outermost: the Host allowlist, CORS
    app.state.query_names = {}  # each route's query parameters (known_query_only)
    return app


async def _trainyard_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TrainyardError)
    return trainyard_error_response(exc)


def trainyard_error_response(exc: TrainyardError) -> JSONResponse:
    if isinstance(exc, InvalidJobSpec):  # a 422 like any other, in the same body shape
        return _unprocessable(spec_errors(exc.message), exc.message)
    headers = {"Retry-After": "5"} if isinstance(exc, QueueFull) else None
    if exc.status_code >= 500:
        log.error("request failed: %s", exc)
    return JSONResponse({"detail": exc.message}, status_code=exc.status_code, headers=headers)


async def known_query_only(request: Request) -> None:
    """422 for a query parameter the route does not take: `?stauts=running` silently ignored
    would list every job, and the user would never learn why."""
    if not request.query_params:
        return
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    # Once per route (by path and methods: the router hands out derived route objects, which
    # are unhashable), not a walk of its dependencies on every request.
    cache: dict[tuple[str, frozenset[str]], frozenset[str]] = request.app.state.query_names
    key = (route.path_format, frozenset(route.methods or ()))
    known = cache.get(key)
    if known is None:
        known = cache[key] = frozenset(_query_names(route.dependant))
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise RequestValidationError(
            [
                {
                    "loc": ("query", name),
                    "msg": f"unknown query parameter; this route takes: {allowed}",
                    "type": "extra_forbidden",
                }
                for name in unknown
            ]
        )


def _query_names(dependant: Dependant) -> set[str]:
    """Every query parameter a route takes, its dependencies' included."""
    names = {param.alias for param in dependant.query_params}
    for sub_dependant in dependant.dependencies:
        names |= _query_names(sub_dependant)
    return names


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """422 naming each bad field and what it allows, in one readable `message` too."""
    assert isinstance(exc, RequestValidationError)
    errors: list[dict[str, Any]] = []
    for error in exc.errors():
        loc = [part if isinstance(part, int) else _utf8(str(part)) for part in error["loc"]]
        where = loc[1:] if loc and loc[0] in _LOC_ROOTS else loc
        errors.append(
            {
                "loc": loc,
                "msg": _utf8(str(error.get("msg", "invalid")).removeprefix("Value error, ")),
                "type": str(error.get("type", "value_error")),
                "field": ".".join(str(part) for part in where) or "body",
            }
        )
    return _unprocessable(errors, "; ".join(f"{e['field']}: {e['msg']}" for e in errors))


# --- 422 bodies -----------------------------------------------------------------------------
#
# FastAPI's published schema (HTTPValidationError): {"detail": [{"loc", "msg", "type"}]}. Each
# item also carries `field` (the loc as people write it: "resources.memory"), and the body a
# `message` joining them all ("resources.memory: ...; env: ..."). The request's input is never
# echoed back (it may be a megabyte, or not encodable).

_LOC_ROOTS = ("body", "query", "path", "header", "cookie")
_SPEC_FIELDS = sorted(
    [*JobSpec.model_fields, *(f"resources.{name}" for name in Resources.model_fields)],
    key=len,
    reverse=True,
)
# A refusal that names its field starts with it: "resources.memory 100t is more than ...".
_FIELDS = rf"(?:{'|'.join(map(re.escape, _SPEC_FIELDS))})\b"
_NAMED_FIELD = re.compile(rf"(?P<field>{_FIELDS})")
_NEXT_PROBLEM = re.compile(rf"; (?={_FIELDS})")


def spec_errors(message: str) -> list[dict[str, Any]]:
    """A job-spec refusal raised past validation (no agent could run it) as 422 items: one per
    problem, located at the field it names ("resources.memory ...") or else at the body."""
    errors = []
    for problem in _NEXT_PROBLEM.split(message):
        named = _NAMED_FIELD.match(problem)
        path = named["field"].split(".") if named else []
        errors.append(
            {
                "loc": ["body", *path],
                "msg": _utf8(problem),
                "type": "value_error",
                "field": ".".join(path) or "body",
            }
        )
    return errors


def _unprocessable(errors: list[dict[str, Any]], message: str) -> JSONResponse:
    return JSONResponse({"detail": errors, "message": _utf8(message)}, status_code=422)


def _utf8(text: str) -> str:
    """Text that encodes as UTF-8: a lone surrogate from the request becomes '\\ud800'."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# --- the request-body bound -----------------------------------------------------------------


class BodyTooLarge(HTTPException):
    """413, raised while reading a body past the bound. An HTTPException, so FastAPI's own
    body parsing lets it through to a 413 response instead of turning it into a 400."""

    def __init__(
        self, max_bytes: int, size: int | None = None, setting: str = "TRAINYARD_MAX_BODY_BYTES"
    ) -> None:
        this = f"; this one is {size} bytes" if size is not None else ""
        super().__init__(
            status_code=413,
            detail=f"the request body must be at most {max_bytes} bytes ({setting}){this}",
            headers={"Connection": "close"},
        )


class BodySizeLimit:
    """Pure ASGI middleware: a request body larger than `max_bytes` gets 413 and is never read
    whole. A Content-Length past the bound is refused before anything is read; a body without
    one (chunked) is counted as it streams and refused at the first chunk past the bound."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, larger: dict[str, tuple[int, str]] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # path prefix -> its own bound and the setting that sets it (workdir uploads)
        self.larger = larger or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        max_bytes, setting = next(
            (bound for prefix, bound in self.larger.items() if path.startswith(prefix)),
            (self.max_bytes, "TRAINYARD_MAX_BODY_BYTES"),
        )
        declared = _content_length(scope)
        if declared is not None and declared > max_bytes:
            await _send_too_large(send, BodyTooLarge(max_bytes, declared, setting))
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise BodyTooLarge(max_bytes, setting=setting)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge as exc:  # read outside FastAPI's body parsing (which answers it)
            if started:
                raise
            await _send_too_large(send, exc)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses it; the body is counted anyway
    return None


async def _send_too_large(send: Send, exc: BodyTooLarge) -> None:
    body = json.dumps({"detail": exc.detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
