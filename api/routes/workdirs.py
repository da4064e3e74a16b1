"""/workdirs: code uploaded once by content (`trainyard submit --workdir`), run without an
image rebuild: a job that names one sees it read-only at /workspace."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response, status
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool

from agent.core.workdirs import DIGEST
from api.auth import UserDep
from api.deps import ServiceDep

router = APIRouter(prefix="/workdirs", tags=["workdirs"])

Digest = Annotated[
    str,
    PathParam(
        pattern=f"^{DIGEST.pattern}$",
        description="The sha256 of the archive (64 lowercase hex digits).",
    ),
]


@router.head("/{digest}", responses={404: {"description": "Not uploaded yet."}})
def workdir_exists(digest: Digest, service: ServiceDep) -> Response:
    """200 when the service has this workdir, 404 when it must be uploaded."""
    found = service.workdir_exists(digest)
    return Response(status_code=status.HTTP_200_OK if found else status.HTTP_404_NOT_FOUND)


@router.put(
    "/{digest}",
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    responses={200: {"description": "Already uploaded."}, 413: {"description": "Too large."}},
)
async def put_workdir(
    digest: Digest, request: Request, service: ServiceDep, user: UserDep
) -> Response:
    """Upload a workdir: a gzip-compressed tar of regular files and directories, under the
    sha256 of its bytes. 201 when stored, 200 when it was there already; 400 when the digest
    does not match or the archive holds links, devices, absolute paths or '..'."""
    data = await request.body()  # bounded by TRAINYARD_WORKDIR_MAX_BYTES (BodySizeLimit)
    created = await run_in_threadpool(service.put_workdir, digest, data, user=user)
    return Response(status_code=status.HTTP_201_CREATED if created else status.HTTP_200_OK)
