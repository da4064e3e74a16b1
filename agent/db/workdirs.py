"""Uploaded workdirs, by digest: stored once, read by any agent that runs a job using one."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from agent.db.engine import Database
from agent.db.models import WorkdirRow


def utcnow() -> datetime:
    return datetime.now(UTC)


class WorkdirStore:
    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

    def exists(self, digest: str) -> bool:
        with self.db.reading() as s:
            return (
                s.scalar(select(WorkdirRow.digest).where(WorkdirRow.digest == digest)) is not None
            )

    def put(self, digest: str, data: bytes, *, owner: str | None) -> bool:
        """Store the archive unless it is there already: True when it was stored now. The
        digest names the content, so a second upload of the same bytes changes nothing."""
        try:
            with self.db.transaction(durable=True) as s:
                if s.get(WorkdirRow, digest) is not None:
                    return False
                s.add(
                    WorkdirRow(
                        digest=digest,
                        size=len(data),
                        owner=owner,
                        created_at=self.clock(),
                        data=data,
                    )
                )
                return True
        except IntegrityError:  # the same bytes, uploaded at the same moment by another client
            return False

    def get(self, digest: str) -> bytes | None:
        with self.db.reading() as s:
            return s.scalar(select(WorkdirRow.data).where(WorkdirRow.digest == digest))
