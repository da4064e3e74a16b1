"""/jobs/{id}/outputs: what a job wrote under /outputs, from whichever host has it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from agent.jobfiles import OutputFile
from api.auth import UserDep
from api.deps import ServiceDep
from api.routes.jobs import JobId

router = APIRouter(prefix="/jobs", tags=["outputs"])


class OutputsOut(BaseModel):
    files: list[OutputFile] = Field(description="Regular files, path relative to /outputs.")
    truncated: bool = Field(description="True when the listing stopped at its bound.")


@router.get("/{job_id}/outputs", response_model=OutputsOut)
def list_outputs(job_id: JobId, service: ServiceDep, user: UserDep) -> OutputsOut:
    """The files the job wrote under `/outputs` (checkpoints, results): name, size, modified."""
    listing = service.outputs(job_id, user=user)
    return OutputsOut(files=listing.files, truncated=listing.truncated)


@router.get(
    "/{job_id}/outputs/{path:path}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}, 206: {}},
)
def download_output(
    job_id: JobId,
    path: str,
    service: ServiceDep,
    user: UserDep,
    range_: Annotated[str | None, Header(alias="range", max_length=200)] = None,
) -> Response:
    """One output file, streamed; `Range` is supported. Paths cannot leave the job's directory."""
    found = service.output(job_id, path, user=user)
    if isinstance(found, Path):
        return FileResponse(found, filename=found.name)
    client = found
    download = client.download(job_id, path, range_header=range_)
    remote = download.__enter__()

    def body() -> Iterator[bytes]:
        try:
            yield from remote.body
        finally:
            download.__exit__(None, None, None)

    return StreamingResponse(body(), status_code=remote.status_code, headers=remote.headers)
