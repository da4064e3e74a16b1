"""API tokens: create, list, revoke, and look one up by the hash of what a request presents."""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import UTC, datetime

from sqlalchemy import Connection, bindparam, or_, select

from agent.core.auth import (
    SHOWN_PREFIX_CHARS,
    TOKEN_PREFIX,
    TokenInfo,
    User,
    check_user_name,
    hash_token,
    new_token,
    new_token_id,
    same_hash,
    shown_prefix,
    well_formed,
)
from agent.core.errors import TrainyardError
from agent.db.engine import Database
from agent.db.models import TokenRow

MIN_REFERENCE_CHARS = 4
"""The shortest id or token prefix `revoke` accepts (shorter ones match too much)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class TokenStore:
    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

    def create(self, user: str, *, admin: bool = False) -> tuple[TokenInfo, str]:
        """A new token for `user`: its record and the secret, which is never stored."""
        check_user_name(user)
        secret = new_token()
        row = TokenRow(
            id=new_token_id(),
            username=user,
            admin=admin,
            token_hash=hash_token(secret),
            prefix=shown_prefix(secret),
            created_at=self.clock(),
            revoked_at=None,
        )
        with self.db.transaction(durable=True) as s:
            s.add(row)
            s.flush()
            return _info(row), secret

    def list(self) -> list[TokenInfo]:
        with self.db.reading() as s:
            rows = s.scalars(select(TokenRow).order_by(TokenRow.created_at, TokenRow.id))
            return [_info(row) for row in rows]

    def any(self) -> bool:
        """Whether any token was ever created (a revoked one counts: revoking every token
        locks the API; it does not reopen it to single-user mode)."""
        # Core, prebuilt: in single-user mode every request asks this.
        with self.db.read() as conn:
            return conn.scalar(ANY_TOKEN) is not None

    def user(self, token: str) -> User | None:
        """The user of an active token; None for anything else."""
        if not well_formed(token):
            return None
        digest = hash_token(token)
        # Core, prebuilt: with tokens every request asks this.
        with self.db.read() as conn:
            row = conn.execute(_ACTIVE_TOKEN, {"digest": digest}).first()
        if row is None or not same_hash(row.token_hash, digest):
            return None
        return User(row.username, admin=row.admin, token_id=row.id)

    def active(self, token_id: str) -> bool:
        """Whether the token with this id exists and is not revoked."""
        with self.db.read() as conn:
            return bool(active_ids(conn, [token_id]))

    def revoke(self, reference: str) -> tuple[TokenInfo, bool]:
        """Revoke the one token that `reference` names: its id (or the start of it), the
        token itself, or the start of the token as `token list` shows it. Returns the token
        and whether it was active until now."""
        reference = reference.strip()
        if len(reference) < MIN_REFERENCE_CHARS:
            raise TrainyardError(
                f"name a token by its id or the start of it (at least {MIN_REFERENCE_CHARS} "
                "characters); see python run.py token list"
            )
        matches = [TokenRow.id.startswith(reference, autoescape=True)]
        if reference.startswith(TOKEN_PREFIX):
            matches.append(TokenRow.token_hash == hash_token(reference))
            if len(reference) <= SHOWN_PREFIX_CHARS:
                matches.append(TokenRow.prefix.startswith(reference, autoescape=True))
        with self.db.transaction(durable=True) as s:
            rows = list(s.scalars(select(TokenRow).where(or_(*matches))))
            exact = [row for row in rows if row.id == reference]
            rows = exact or rows
            if not rows:
                raise TrainyardError(
                    f"no token matches {reference[:SHOWN_PREFIX_CHARS]!r}; see python run.py "
                    "token list"
                )
            if len(rows) > 1:
                ids = ", ".join(sorted(row.id for row in rows))
                raise TrainyardError(
                    f"{reference[:SHOWN_PREFIX_CHARS]!r} matches several tokens ({ids}); "
                    "give the id"
                )
            [row] = rows
            was_active = row.revoked_at is None
            if was_active:
                row.revoked_at = self.clock()
            s.flush()
            return _info(row), was_active


_TOKENS = TokenRow.__table__
ANY_TOKEN = select(_TOKENS.c.id).limit(1)
"""A row when any token was ever created: requests then need one (see `any`)."""


def active_ids(conn: Connection, token_ids: Collection[str]) -> set[str]:
    """Which of these token ids are of tokens not revoked: one query."""
    return set(conn.scalars(_ACTIVE_IDS, {"ids": list(token_ids)}))


_ACTIVE_IDS = select(_TOKENS.c.id).where(
    _TOKENS.c.id.in_(bindparam("ids", expanding=True)), _TOKENS.c.revoked_at.is_(None)
)
_ACTIVE_TOKEN = (
    select(_TOKENS.c.id, _TOKENS.c.username, _TOKENS.c.admin, _TOKENS.c.token_hash)
    .where(_TOKENS.c.token_hash == bindparam("digest"), _TOKENS.c.revoked_at.is_(None))
    .limit(1)
)


def _info(row: TokenRow) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        user=row.username,
        admin=row.admin,
        prefix=row.prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )
