"""PostgreSQL connections: one idle for a while is pinged before use (and replaced if the server
dropped it); one used a moment ago is not, which saves a round trip per transaction."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import text

from agent.core.errors import DatabaseUnavailable
from agent.db import engine as engine_module
from agent.db.engine import Database
from tests.conftest import PG_ADMIN_DSN

NAME = f"trainyard_test_connections_{os.getpid()}"


@pytest.fixture
def database() -> Iterator[Database]:
    """A database of its own: dropping its connections touches no other test's pool."""
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{NAME}"')
        admin.execute(f'CREATE DATABASE "{NAME}"')
    db = Database(f"postgresql+psycopg://postgres@127.0.0.1:5432/{NAME}")
    yield db
    db.dispose()
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{NAME}" WITH (FORCE)')


def _ask(db: Database) -> int:
    with db.read() as conn:
        return int(conn.scalar(text("SELECT 1")) or 0)


def _drop_connections(name: str = NAME) -> int:
    """What a server restart does to the pool: every connection to the database is gone."""
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        ).fetchall()
    return len(rows)


def test_an_idle_connection_the_server_dropped_is_replaced_unseen(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "PING_IF_IDLE_SECONDS", 0.0)  # every one counts as idle
    assert _ask(database) == 1  # one connection in the pool
    assert _drop_connections() >= 1
    assert _ask(database) == 1  # the ping found it dead; the pool opened another


def test_a_connection_used_a_moment_ago_is_not_pinged_and_a_drop_costs_one_call(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "PING_IF_IDLE_SECONDS", 3600.0)
    assert _ask(database) == 1
    assert _drop_connections() >= 1
    with pytest.raises(DatabaseUnavailable):  # not pinged: its statement meets the drop
        _ask(database)
    assert _ask(database) == 1  # the pool let the dead connections go
