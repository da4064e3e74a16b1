"""The agent's own endpoint: its jobs' logs (tail, follow) and outputs, for the API only.

Each host owns its files; the API reaches them here through the agent registry. Every request
must carry the shared secret (`Authorization: Bearer <TRAINYARD_AGENT_SECRET>`)."""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import generate_latest

from agent.config import Settings
from agent.core.errors import TrainyardError
from agent.core.jobs import check_deletable
from agent.jobfiles import OutputListing
from agent.metrics import REGISTRY
from agent.metrics_collector import EXPOSITION_CONTENT_TYPE
from agent.remote import INTERNAL_PREFIX
from agent.service import TrainyardService

log = logging.getLogger("trainyard.agent")

HEARTBEAT_SECONDS = 15.0


def _authorizer(settings: Settings) -> Callable[..., None]:
    assert settings.agent_secret is not None
    secret = settings.agent_secret.get_secret_value().encode()

    def authorized(authorization: Annotated[str, Header()] = "") -> None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), secret):
            raise HTTPException(401, "this endpoint serves the Trainyard API only")

    return authorized


def _listing(listing: OutputListing | None) -> dict[str, Any]:
    files = listing.files if listing else []
    return {
        "files": [
            {"path": f.path, "size": f.size, "modified": f.modified.isoformat()} for f in files
        ],
        "truncated": bool(listing and listing.truncated),
    }


def endpoint_app(settings: Settings, service: TrainyardService) -> FastAPI:
    authorized = _authorizer(settings)
    app = FastAPI(title="Trainyard agent endpoint", docs_url=None, redoc_url=None, openapi_url=None)
    files = APIRouter(prefix=INTERNAL_PREFIX, dependencies=[Depends(authorized)])

    @app.exception_handler(TrainyardError)
    async def trainyard_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TrainyardError)
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """This agent's metrics for Prometheus (counters only: no job data, no secret)."""
        return Response(generate_latest(REGISTRY), media_type=EXPOSITION_CONTENT_TYPE)

    @files.get("/jobs/{job_id}/logs", response_class=PlainTextResponse)
    def tail(job_id: str, tail: Annotated[int, Query(ge=1, le=100_000)] = 100) -> str:
        return "".join(f"{line}\n" for line in service.files.tail(_checked(job_id), tail))

    @files.get("/jobs/{job_id}/logs/follow")
    def follow(
        job_id: str,
        tail: Annotated[int, Query(ge=0, le=100_000)] = 0,
        after: Annotated[str | None, Query(max_length=80)] = None,
    ) -> StreamingResponse:
        items = service.log_follow_positioned(
            _checked(job_id), from_lines=tail, after=after, heartbeat=HEARTBEAT_SECONDS
        )

        def body() -> Iterator[str]:
            for position, line in items:
                yield f"{position}\t{line}\n"

        return StreamingResponse(body(), media_type="text/plain; charset=utf-8")

    @files.get("/jobs/{job_id}/outputs")
    def outputs(job_id: str) -> dict[str, Any]:
        here = service.files.has_outputs(_checked(job_id))
        return _listing(service.files.outputs(job_id) if here else None)

    @files.get("/jobs/{job_id}/outputs/{path:path}")
    def output(job_id: str, path: str) -> FileResponse:
        return FileResponse(service.files.output_path(_checked(job_id), path))

    @files.delete("/jobs/{job_id}/files", status_code=204)
    def delete_files(job_id: str) -> Response:
        """The API deletes a finished job: its files on this host go with it."""
        check_deletable(job_id, service.queue.get(_checked(job_id)).status)
        service.files.delete(job_id)
        return Response(status_code=204)

    app.include_router(files)
    return app


def _checked(job_id: str) -> str:
    if len(job_id) != 32 or not all(c in "0123456789abcdef" for c in job_id):
        raise HTTPException(404, f"no job has the id {job_id!r}")
    return job_id


class AgentEndpoint:
    """Serves endpoint_app on TRAINYARD_AGENT_LISTEN from a thread of the agent process."""

    def __init__(self, settings: Settings, service: TrainyardService) -> None:
        host, _, port = settings.agent_listen.rpartition(":")
        config = uvicorn.Config(
            endpoint_app(settings, service),
            host=host.strip("[]"),
            port=int(port),
            log_level="warning",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="endpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("agent endpoint for job logs and outputs on %s", self._server.config.host)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
