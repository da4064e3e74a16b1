"""Who is asking, and what they may do — pure: tokens, users, ownership, quotas, redaction.

A token is `ty_` plus 43 URL-safe characters (256 random bits). Only its SHA-256 is stored:
a token this strong needs no slow hash, and looking a token up by its hash (a unique index)
compares nothing secret in Python time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from agent.core.errors import QueueFull, TrainyardError

TOKEN_PREFIX = "ty_"  # noqa: S105 - the shape of a token, not one
TOKEN_RANDOM_BYTES = 32
MAX_TOKEN_CHARS = 256
"""A longer bearer value is refused unhashed."""
SHOWN_PREFIX_CHARS = 10
"""`token list` shows this much of each token (ty_ + 7 characters, 42 bits) to tell them apart."""
TOKEN_PATTERN = re.compile(r"ty_[A-Za-z0-9_-]{43}")
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
LOCAL_USER_NAME = "local"
REDACTED = "***"
HIDDEN_JOB = "(hidden)"
"""What a user sees instead of the id of another user's job (e.g. which job holds a GPU)."""


@dataclass(frozen=True)
class User:
    """The caller of one request."""

    name: str
    admin: bool
    token_id: str | None = None  # None: the single-user mode's implicit user

    @property
    def actor(self) -> str:
        """Who events name. The implicit single user acts as "api", as before tokens existed."""
        return self.name if self.token_id is not None else "api"

    def owner_scope(self) -> str | None:
        """The owner a query is limited to: None (every job) for an admin."""
        return None if self.admin else self.name


LOCAL_USER = User(LOCAL_USER_NAME, admin=True)
"""Every request's user while no token exists (single-user mode, loopback only)."""
SEND_AUTHORIZATION = (
    "this API needs a token: send 'Authorization: Bearer <token>' (an admin creates one with: "
    "python run.py token create --user NAME)"
)
"""The 401 of a request without a token once any token exists."""
NOT_A_VALID_TOKEN = "the token is not valid (unknown or revoked)"  # noqa: S105 (a message)


def owner_scope(user: User | None) -> str | None:
    """None for an internal caller (no user: the agent's endpoint, benchmarks) and admins."""
    return None if user is None else user.owner_scope()


@dataclass(frozen=True)
class TokenInfo:
    """A stored token, without its secret."""

    id: str
    user: str
    admin: bool
    prefix: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class InvalidToken(TrainyardError):
    """The token is not valid."""

    status_code = 401


class QuotaExceeded(QueueFull):
    """A per-user quota is reached; try again when some of your jobs have finished."""


class UnsafeBind(TrainyardError):
    """The API refuses to listen beyond loopback without authentication."""


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_RANDOM_BYTES)


def new_token_id() -> str:
    return secrets.token_hex(6)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def shown_prefix(token: str) -> str:
    return token[:SHOWN_PREFIX_CHARS]


def well_formed(token: str) -> bool:
    """Worth a database lookup: the shape every issued token has."""
    return len(token) <= MAX_TOKEN_CHARS and TOKEN_PATTERN.fullmatch(token) is not None


def same_hash(stored: str, presented: str) -> bool:
    return hmac.compare_digest(stored.encode(), presented.encode())


def check_user_name(name: str) -> str:
    if USER_NAME.fullmatch(name) is None:
        raise TrainyardError(
            f"user name {name[:80]!r} must be 1 to 64 letters, digits or . _ @ - "
            "(starting with a letter or digit)"
        )
    return name


def can_see(user: User | None, owner: str | None) -> bool:
    scope = owner_scope(user)
    return scope is None or scope == owner


def redact_env(env: dict[str, str]) -> dict[str, str]:
    """Env values are secrets: the keys stay, every value becomes `***`."""
    return dict.fromkeys(env, REDACTED)


# --- quotas ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quota:
    """Per-user limits, checked when a job is submitted. They apply to admins too: an admin's
    runaway sweep starves the team as surely as anyone's, and an admin can raise the limits."""

    max_queued: int | None
    max_gpus: int | None

    def refusal(self, owner: str, *, queued: int, running_gpus: int, gpus: int) -> str | None:
        """Why this submission is over quota, with the numbers; None when it is within."""
        if self.max_queued is not None and queued >= self.max_queued:
            return (
                f"quota: user {owner} has {queued} jobs queued and the per-user limit is "
                f"{self.max_queued} (TRAINYARD_QUOTA_QUEUED); try again when some have started"
            )
        if self.max_gpus is not None and gpus > 0 and running_gpus + gpus > self.max_gpus:
            return (
                f"quota: user {owner} has {running_gpus} GPUs in starting or running jobs, this "
                f"job asks for {gpus}, and the per-user limit is {self.max_gpus} "
                "(TRAINYARD_QUOTA_GPUS); try again when some have finished"
            )
        return None


# --- binding --------------------------------------------------------------------------------


def bind_refusal(host: str, loopback: tuple[str, ...], *, tokens_exist: bool) -> str | None:
    """Why the API must not listen on `host`: beyond loopback it needs authentication."""
    if host in loopback or tokens_exist:
        return None
    return (
        f"refusing to listen on {host}: no API token exists, so anyone who can reach it would "
        "act as the admin; create one first (python run.py token create --user NAME [--admin]) "
        "or listen on 127.0.0.1"
    )
