"""/stats, /health, /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from agent.metrics_collector import EXPOSITION_CONTENT_TYPE
from api.auth import UserDep
from api.deps import ServiceDep, SettingsDep
from api.schemas import AgentOut, HealthOut, StatsOut, error_responses

router = APIRouter(tags=["system"])


@router.get("/stats", response_model=StatsOut, responses=error_responses(401, 403, 503))
def stats(service: ServiceDep, settings: SettingsDep, _user: UserDep) -> StatsOut:
    """Jobs by status, success rate, mean queue wait and run time (of every user's jobs:
    counts only, no job ids)."""
    return StatsOut.of(service.stats(), settings.max_queued)


@router.get("/agents", response_model=list[AgentOut], responses=error_responses(401, 403, 503))
def agents(service: ServiceDep, user: UserDep) -> list[AgentOut]:
    """Every registered agent: GPUs free and held (by which job; another user's job shows
    as "(hidden)" to a non-admin), memory, running jobs, last heartbeat. `alive` is false
    once heartbeats stop."""
    live = {a.id for a in service.live_agents()}
    return [AgentOut.of(a, alive=a.id in live) for a in service.agents(user=user)]


@router.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut}})
def health(service: ServiceDep) -> JSONResponse:
    """200 when the database answers (and, in a process with an embedded agent, its Docker
    engine); 503 with the reason otherwise. An API-only process never talks to Docker: it
    reports how many live agents there are (each agent's engine is in `GET /agents`)."""
    result = service.health()
    body = HealthOut(status="ok" if result.ok else "unhealthy", checks=result.checks)
    return JSONResponse(body.model_dump(), status_code=200 if result.ok else 503)


@router.get("/metrics", include_in_schema=False)
def metrics(service: ServiceDep) -> Response:
    """Prometheus text format: this process's counters and histograms, then the gauges read
    from the database now (the same in every API process); the README lists every series."""
    return Response(service.metrics_exposition(), media_type=EXPOSITION_CONTENT_TYPE)
