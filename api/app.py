"""create_app(settings): lifespan, routers, one error handler."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from agent.config import Settings
from agent.core.errors import QueueFull, TrainyardError
from agent.wiring import System
from api.routes import jobs, outputs, system, train

log = logging.getLogger("trainyard.api")


def create_app(settings: Settings | None = None, *, system_: System | None = None) -> FastAPI:
    """The API. With `system_` given the caller owns its lifecycle; else the app builds one."""
    settings = settings or (system_.settings if system_ else Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = system_ is None
        built = system_ or System.build(settings, with_agent=settings.mode == "all")
        app.state.service = built.service
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
    )
    app.state.settings = settings
    if system_ is not None:
        app.state.service = system_.service
    app.include_router(jobs.router)
    app.include_router(outputs.router)
    app.include_router(train.router)
    app.include_router(system.router)
    app.add_exception_handler(TrainyardError, _trainyard_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    return app


async def _trainyard_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TrainyardError)
    headers = {"Retry-After": "5"} if isinstance(exc, QueueFull) else None
    if exc.status_code >= 500:
        log.error("request failed: %s", exc)
    return JSONResponse({"detail": exc.message}, status_code=exc.status_code, headers=headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """422 naming each bad field and what it allows, in one readable `message` too."""
    assert isinstance(exc, RequestValidationError)
    errors: list[dict[str, Any]] = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path")]
        field = ".".join(loc) or "body"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        errors.append({"field": field, "message": message, "type": error.get("type")})
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse(jsonable_encoder({"detail": errors, "message": summary}), status_code=422)
