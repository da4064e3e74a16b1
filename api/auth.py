"""Who is calling (bearer tokens, or single-user mode), which jobs they may touch, and the
Host allowlist and CORS that keep browsers from being turned against the API.

- With no token created at all the API runs in single-user mode: every request is the local
  admin, and the API listens on loopback only (`check_startup`). A browser on this machine
  could then be used against it, so a request from a foreign origin is refused (403), and
  Host names outside TRAINYARD_ALLOWED_HOSTS are refused (400) against DNS rebinding.
- Once a token exists every route except /health, /metrics and the OpenAPI pages needs
  `Authorization: Bearer <token>`. A browser never sends that by itself, so there is no
  cross-site request to forge.
- The agent process never calls the API, and the API reaches an agent's endpoint with
  TRAINYARD_AGENT_SECRET: no token is involved between them.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from agent.config import Settings
from agent.core.auth import InvalidToken, User
from agent.core.errors import JobNotFound
from agent.service import TrainyardService
from api.deps import ServiceDep, SettingsDep

log = logging.getLogger("trainyard.api")

bearer = HTTPBearer(
    auto_error=False,
    description="An API token: python run.py token create --user NAME [--admin]",
)
JOB_ID = re.compile(r"[0-9a-f]{32}")
JOB_PATH_PARAMS = ("job_id", "task_id")


async def current_user(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    """The request's user, or 401 (with `WWW-Authenticate: Bearer`). The database is asked
    in a worker thread, and only when it must be."""
    token = credentials.credentials if credentials is not None else None
    if token is None and request.headers.get("authorization") is not None:
        raise _unauthorized("send the token as 'Authorization: Bearer <token>'")
    try:
        if token is None and service.tokens_known_to_exist:
            user = service.authenticate(token)  # answers without the database
        else:
            user = await run_in_threadpool(service.authenticate, token)
    except InvalidToken as exc:
        raise _unauthorized(exc.message) from None
    if user.token_id is None:
        _refuse_foreign_origin(request, settings)
    return user


UserDep = Annotated[User, Depends(current_user)]


async def job_access(request: Request, service: ServiceDep, user: UserDep) -> None:
    """A router dependency: every route with a job id in its path answers 404 for a job the
    user may not see, before the route runs (a streamed answer never starts)."""
    for name in JOB_PATH_PARAMS:
        job_id = request.path_params.get(name)
        if not isinstance(job_id, str):
            continue
        if not JOB_ID.fullmatch(job_id):
            # What a user mistyped or cut short is a job that does not exist, not a schema error.
            raise JobNotFound(f"job not found: no job has the id {job_id[:40]!r}")
        await run_in_threadpool(service.check_visible, job_id, user=user)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": "Bearer"},
    )


def _refuse_foreign_origin(request: Request, settings: Settings) -> None:
    refusal = foreign_origin_refusal(request.headers.get("origin"), settings)
    if refusal is not None:
        raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail=refusal)


def foreign_origin_refusal(origin: str | None, settings: Settings) -> str | None:
    """In single-user mode, a page from another site must not drive the API through a
    browser on this machine (a form or a no-cors fetch needs no CORS to send a request):
    why a request from `origin` is refused (403), or None."""
    if origin is None or origin in settings.cors_origin_list:
        return None
    host = (urlsplit(origin).hostname or "").lower()
    trusted = {name.strip("[]") for name in settings.trusted_hosts}
    if host and host in trusted:
        return None
    return (
        f"requests from the origin {origin[:200]!r} are refused: no API token exists "
        "(single-user mode); allow the origin with TRAINYARD_CORS_ORIGINS, or create tokens"
    )


# --- the app --------------------------------------------------------------------------------


def add_security_middleware(app: FastAPI, settings: Settings) -> None:
    """The Host allowlist (outermost: a foreign name gets 400 before anything else) and, only
    when TRAINYARD_CORS_ORIGINS names origins, CORS for exactly those."""
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=["Location", "Idempotent-Replayed", "Content-Range"],
            max_age=600,
        )
    app.add_middleware(
        TrustedHostMiddleware, allowed_hosts=settings.trusted_hosts, www_redirect=False
    )


def check_startup(service: TrainyardService, settings: Settings) -> None:
    """Refuse to serve beyond loopback without a token (UnsafeBind); say which mode runs."""
    service.check_bind(settings.host)
    if service.tokens_exist():
        log.info(
            "API tokens are required: every route but /health, /metrics and /docs needs "
            "'Authorization: Bearer <token>'"
        )
    else:
        log.warning(
            "no API token exists: single-user mode, every request acts as the admin user "
            "'local', on %s only; create a token to require one: "
            "python run.py token create --user NAME [--admin]",
            settings.host,
        )
