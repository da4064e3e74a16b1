"""The original system's endpoints, kept so existing scripts keep working."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from agent.core.jobs import JobSpec
from api.auth import UserDep
from api.deps import ServiceDep
from api.routes.jobs import IdempotencyKey, JobId, get_job, submitted
from api.schemas import JobOut, TrainAccepted, TrainRequest

router = APIRouter(prefix="/train", tags=["train (original API)"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TrainAccepted,
    responses={200: {"model": TrainAccepted, "description": "A repeated Idempotency-Key."}},
)
def train(
    request: TrainRequest,
    service: ServiceDep,
    user: UserDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> TrainAccepted:
    """Queue a job on the default training image with these hyper-parameters."""
    job, created = service.submit_or_get(
        JobSpec(params=request.params()), user=user, idempotency_key=idempotency_key
    )
    submitted(response, job.id, created=created)
    return TrainAccepted(**JobOut.of(job).model_dump(), task_id=job.id)


@router.get("/{task_id}", response_model=JobOut)
def train_status(task_id: JobId, service: ServiceDep, user: UserDep) -> JobOut:
    """Same as GET /jobs/{id}."""
    return get_job(task_id, service, user)
