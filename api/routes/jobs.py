"""/jobs: submit, list, get, cancel, events, logs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response, status
from fastapi.responses import PlainTextResponse, StreamingResponse

from agent.core.jobs import JobSpec, JobStatus
from agent.core.records import Event
from agent.service import TrainyardService
from api.deps import ServiceDep
from api.schemas import JobOut, JobPage

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="A job id (32 hex digits).")]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobOut)
def submit_job(spec: JobSpec, service: ServiceDep, response: Response) -> JobOut:
    """Queue a training job. 429 when the queue is at its bound."""
    job = service.submit(spec)
    response.headers["Location"] = f"/jobs/{job.id}"
    return JobOut.of(job)


@router.get("", response_model=JobPage)
def list_jobs(
    service: ServiceDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobPage:
    """Jobs, newest first."""
    jobs, total = service.list_jobs(status=status_filter, limit=limit, offset=offset)
    reasons = service.unschedulable_reasons(jobs)
    items = [JobOut.of(j, unschedulable=reasons.get(j.id)) for j in jobs]
    return JobPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: JobId, service: ServiceDep) -> JobOut:
    job = service.get(job_id)
    reason = service.unschedulable_reasons([job]).get(job.id)
    return JobOut.of(job, with_attempts=True, unschedulable=reason)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: JobId, service: ServiceDep) -> JobOut:
    """Cancel a queued job at once; stop a running one's container (SIGTERM, then SIGKILL)."""
    return JobOut.of(service.cancel(job_id, actor="api"), with_attempts=True)


@router.get("/{job_id}/events", response_model=list[Event])
def job_events(job_id: JobId, service: ServiceDep) -> list[Event]:
    """The job's audit trail: every state change, who made it and why."""
    return service.events(job_id)  # the records are the response (no second field list)


@router.get(
    "/{job_id}/logs",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}, "text/event-stream": {}}}},
)
def job_logs(
    job_id: JobId,
    service: ServiceDep,
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
        return _sse_logs(service, job_id, tail, last_event_id)
    if not follow:
        lines = service.log_tail(job_id, tail)
        return PlainTextResponse("".join(f"{line}\n" for line in lines))
    lines_iter = service.log_follow(job_id, from_lines=tail)

    def body() -> Iterator[str]:
        for line in lines_iter:
            yield f"{line}\n"

    return StreamingResponse(body(), media_type="text/plain; charset=utf-8")


SSE_HEARTBEAT_SECONDS = 15.0


def _sse_logs(
    service: TrainyardService, job_id: str, tail: int, last_event_id: str | None
) -> StreamingResponse:
    items = service.log_follow_positioned(
        job_id, from_lines=tail, after=last_event_id, heartbeat=SSE_HEARTBEAT_SECONDS
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
