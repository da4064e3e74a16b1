"""/jobs/{id}/metrics: the training curves a job printed as JSON lines, read incrementally."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from agent.core.errors import InvalidRequest
from agent.core.training import MAX_KEY_LENGTH, MAX_KEYS
from api.deps import ServiceDep
from api.routes.jobs import JobId
from api.schemas import MetricsOut

router = APIRouter(prefix="/jobs", tags=["metrics"])

MAX_CURSOR = 2**63 - 1
"""Largest cursor: the range of the ids behind it on every database."""
MAX_LIMIT = 100_000
DEFAULT_LIMIT = 20_000


@router.get("/{job_id}/metrics", response_model=MetricsOut)
def job_metrics(
    job_id: JobId,
    service: ServiceDep,
    keys: Annotated[
        str | None,
        Query(
            max_length=MAX_KEYS * (MAX_KEY_LENGTH + 1),
            description=f"Comma-separated keys, e.g. loss,accuracy (at most {MAX_KEYS}); "
            "all keys when absent.",
        ),
    ] = None,
    since: Annotated[
        int | None,
        Query(
            ge=0, le=MAX_CURSOR, description="A `cursor` from an earlier answer: only newer points."
        ),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description=f"Most points in one answer (1 to {MAX_LIMIT}).")
    ] = DEFAULT_LIMIT,
) -> MetricsOut:
    """The job's metric series: every finite number (not a boolean) it printed in a JSON
    object line on stdout, with the line's time, `step` and `epoch` when the line had them,
    and the attempt. Series are per job, so a resumed attempt continues the same curve. Each
    key keeps at most TRAINYARD_METRICS_MAX_POINTS points (older ones are thinned)."""
    wanted = _keys(keys)
    page = service.metric_series(job_id, keys=wanted, since=since, limit=limit)
    return MetricsOut.of(page)


def _keys(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    keys = [key.strip() for key in raw.split(",") if key.strip()]
    if not keys:
        raise InvalidRequest("keys: name at least one key, e.g. ?keys=loss,accuracy")
    if len(keys) > MAX_KEYS:
        raise InvalidRequest(f"keys: at most {MAX_KEYS} keys, not {len(keys)}")
    too_long = [key for key in keys if len(key) > MAX_KEY_LENGTH]
    if too_long:
        raise InvalidRequest(
            f"keys: a key is at most {MAX_KEY_LENGTH} characters ({len(too_long)} are longer)"
        )
    return keys
