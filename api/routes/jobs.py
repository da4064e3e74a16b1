"""/jobs: submit, list, get, cancel, events, logs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Path, Query, Response, status
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import StringConstraints
from starlette.concurrency import run_in_threadpool

from agent.core.auth import User
from agent.core.jobs import (
    MAX_LABEL_VALUE_CHARS,
    MAX_LABELS,
    MAX_NAME_CHARS,
    JobSpec,
    JobStatus,
)
from agent.core.records import Event
from agent.service import LogPoller, TrainyardService
from api.auth import UserDep
from api.deps import ServiceDep
from api.schemas import JobOut, JobPage

router = APIRouter(prefix="/jobs", tags=["jobs"])

# The lengths too, so that no regex engine's `$` (Python's matches before a final newline)
# lets a 33rd character through.
JobId = Annotated[
    str,
    Path(
        pattern=r"^[0-9a-f]{32}$",
        min_length=32,
        max_length=32,
        description="A job id (32 hex digits).",
    ),
]
MAX_LABEL_FILTER_CHARS = 64 + MAX_LABEL_VALUE_CHARS
MAX_PAGE = 500
"""Most jobs one page lists."""
MAX_OFFSET = 10_000_000
"""Furthest a page may start: keeps OFFSET inside every database's integer range."""
MAX_IDEMPOTENCY_KEY = 128
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY,
        pattern=r"^[\x21-\x7e]+$",
        description="Send a submission again with the same key (yours alone; at most "
        f"{MAX_IDEMPOTENCY_KEY} visible ASCII characters) and you get the first job back "
        "(200), never a second one.",
    ),
]


REPLAYED: dict[int | str, dict[str, Any]] = {
    200: {"model": JobOut, "description": "The first job of a repeated Idempotency-Key."}
}
# key=value; no NUL (PostgreSQL refuses it in text). The key's own rules are the spec's: a
# filter with another key simply matches nothing.
LabelFilter = Annotated[
    str, StringConstraints(pattern=r"^[^=\x00]+=[^\x00]*$", max_length=MAX_LABEL_FILTER_CHARS)
]


def submitted(response: Response, job_id: str, *, created: bool) -> None:
    """201 and Location for a new job; 200 for the first job of a repeated Idempotency-Key."""
    response.headers["Location"] = f"/jobs/{job_id}"
    if not created:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobOut,
    responses=REPLAYED,
)
def submit_job(
    spec: JobSpec,
    service: ServiceDep,
    user: UserDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    """Queue a training job (yours). 429 when the queue is at its bound or you at a quota
    (TRAINYARD_QUOTA_QUEUED, TRAINYARD_QUOTA_GPUS). `env` values come back as `***`."""
    job, created = service.submit_or_get(spec, user=user, idempotency_key=idempotency_key)
    submitted(response, job.id, created=created)
    return JobOut.of(job)


@router.get("", response_model=JobPage)
def list_jobs(
    service: ServiceDep,
    user: UserDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"1 to {MAX_PAGE}.")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description=f"0 to {MAX_OFFSET}.")] = 0,
    label: Annotated[
        list[LabelFilter] | None,
        Query(
            max_length=MAX_LABELS,
            description="key=value; repeat it for several (a job must carry all of them).",
        ),
    ] = None,
    name_prefix: Annotated[
        str | None,
        Query(max_length=MAX_NAME_CHARS, description="Only jobs whose name starts with this."),
    ] = None,
) -> JobPage:
    """Your jobs (an admin's: everyone's), newest first."""
    jobs, total = service.list_jobs(
        status=status_filter,
        limit=limit,
        offset=offset,
        user=user,
        labels=_label_filter(label or []),
        name_prefix=name_prefix,
    )
    reasons = service.unschedulable_reasons(jobs)
    training = service.training(j.id for j in jobs)  # one query for the page
    items = [
        JobOut.of(j, unschedulable=reasons.get(j.id), training=training.get(j.id)) for j in jobs
    ]
    return JobPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: JobId, service: ServiceDep, user: UserDep) -> JobOut:
    job = service.get(job_id, user=user)
    reason = service.unschedulable_reasons([job]).get(job.id)
    training = service.training([job.id]).get(job.id)
    return JobOut.of(job, with_attempts=True, unschedulable=reason, training=training)


def _label_filter(pairs: list[str]) -> dict[str, str]:
    wanted: dict[str, str] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        wanted[key] = value
    return wanted


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_job(job_id: JobId, service: ServiceDep, user: UserDep) -> Response:
    """Remove a finished job with its log, outputs and metrics (409 while it is not finished:
    cancel it first)."""
    service.delete(job_id, user=user)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{job_id}/rerun", status_code=status.HTTP_201_CREATED, response_model=JobOut)
def rerun_job(job_id: JobId, service: ServiceDep, user: UserDep, response: Response) -> JobOut:
    """A new job with the same spec (env included), owned by the same user."""
    job = service.rerun(job_id, user=user)
    submitted(response, job.id, created=True)
    return JobOut.of(job)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: JobId, service: ServiceDep, user: UserDep) -> JobOut:
    """Cancel a queued job at once; stop a running one's container (SIGTERM, then SIGKILL)."""
    return JobOut.of(service.cancel(job_id, user=user), with_attempts=True)


@router.get("/{job_id}/events", response_model=list[Event])
def job_events(job_id: JobId, service: ServiceDep, user: UserDep) -> list[Event]:
    """The job's audit trail: every state change, who made it and why."""
    return service.events(job_id, user=user)  # the records are the response (no field list)


@router.get(
    "/{job_id}/logs",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}, "text/event-stream": {}}}},
)
def job_logs(
    job_id: JobId,
    service: ServiceDep,
    user: UserDep,
    tail: Annotated[int, Query(ge=1, le=100_000, description="How many last lines.")] = 100,
    follow: Annotated[
        bool, Query(description="Keep streaming new lines until the job ends.")
    ] = False,
    accept: Annotated[str, Header(include_in_schema=False)] = "",
    last_event_id: Annotated[
        str | None,
        Header(
            max_length=60,
            description="SSE: continue just after this event id (a position in the log).",
        ),
    ] = None,
) -> Response:
    """The job's log (agent lines and the container's stdout/stderr), across rotated files.

    With `follow=true` and `Accept: text/event-stream` the log is sent as Server-Sent Events:
    one `data:` line per log line, each with an `id` (its position in the log) so a client
    that reconnects with `Last-Event-ID` continues exactly where it stopped, across rotation;
    a last `end` event carries the job's status."""
    if follow and "text/event-stream" in accept:
        return _sse_logs(service, job_id, tail, last_event_id, user)
    if not follow:
        lines = service.log_tail(job_id, tail, user=user)
        return PlainTextResponse("".join(f"{line}\n" for line in lines))
    poller = service.log_poller(job_id, from_lines=tail, user=user)
    if poller is not None:
        plain = _polled(poller, lambda position, line: f"{line}\n" if position else "")
        return StreamingResponse(plain, media_type="text/plain; charset=utf-8")
    lines_iter = service.log_follow(job_id, from_lines=tail, user=user)

    def body() -> Iterator[str]:
        for line in lines_iter:
            yield f"{line}\n"

    return StreamingResponse(body(), media_type="text/plain; charset=utf-8")


FOLLOW_POLL_SECONDS = 0.2


def _sse_event(position: str, line: str) -> str:
    if position == "gap":
        return "event: gap\ndata: older lines were rotated out of the log\n\n"
    if position:
        return f"id: {position}\ndata: {line}\n\n"
    return ": keep-alive\n\n"  # a write that fails tells us the reader left


async def _polled(
    poller: LogPoller,
    render: Callable[[str, str], str],
    *,
    heartbeat: float | None = None,
    end: Callable[[], str] | None = None,
) -> AsyncIterator[str]:
    """Follow a log by polling it in short thread hops, sleeping in between without a thread:
    a reader that goes away is noticed at the next write or sleep and releases everything."""
    try:
        quiet_since = time.monotonic()
        while True:
            items, finished = await run_in_threadpool(poller.poll)
            for position, line in items:
                yield render(position, line)
            if items:
                quiet_since = time.monotonic()
            if finished:
                break
            if heartbeat is not None and time.monotonic() - quiet_since >= heartbeat:
                quiet_since = time.monotonic()
                yield render("", "")
            await anyio.sleep(FOLLOW_POLL_SECONDS)
        if end is not None:
            yield end()
    finally:
        poller.close()


SSE_HEARTBEAT_SECONDS = 15.0


def _sse_logs(
    service: TrainyardService,
    job_id: str,
    tail: int,
    last_event_id: str | None,
    user: User | None = None,
) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    poller = service.log_poller(job_id, from_lines=tail, after=last_event_id, user=user)
    if poller is not None:
        stream = _polled(
            poller,
            _sse_event,
            heartbeat=SSE_HEARTBEAT_SECONDS,
            end=lambda: f"event: end\ndata: {service.get(job_id, user=user).status.value}\n\n",
        )
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
    items = service.log_follow_positioned(
        job_id, from_lines=tail, after=last_event_id, heartbeat=SSE_HEARTBEAT_SECONDS, user=user
    )

    def events() -> Iterator[str]:
        for position, line in items:
            if position == "gap":
                yield "event: gap\ndata: older lines were rotated out of the log\n\n"
            elif position:
                yield f"id: {position}\ndata: {line}\n\n"
            else:
                yield ": keep-alive\n\n"  # a write that fails tells us the reader left
        yield f"event: end\ndata: {service.get(job_id).status.value}\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
