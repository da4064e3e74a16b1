"""Engine and transactions for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from agent.core.errors import DatabaseUnavailable

SQLITE_BUSY_TIMEOUT_MS = 30_000
PING_IF_IDLE_SECONDS = 1.0
READ_ONLY = "trainyard_read_only"
DURABLE = "trainyard_durable"


class Database:
    """One engine and session factory; `transaction()` is the only way to talk to the DB."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        self.engine = _make_engine(url, echo=echo)
        self._writer_lock = WriterLock(url) if self.is_sqlite else None

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def _writer(self) -> AbstractContextManager[None]:
        return self._writer_lock.held() if self._writer_lock is not None else nullcontext()

    @contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[Session]:
        """A write transaction with an ORM session; `durable` as in `begin`."""
        with _translated(), self._writer(), self.engine.connect() as conn:
            if durable:
                conn.execution_options(**{DURABLE: True})
            with Session(bind=conn, expire_on_commit=False) as session, session.begin():
                yield session

    @contextmanager
    def begin(self, *, durable: bool = False) -> Iterator[Connection]:
        """A write transaction in SQLAlchemy Core: the hot paths use it (no ORM unit of work,
        identity map or row objects). `durable`: what it writes has been promised to someone
        (a 201): on SQLite its commit waits for the disk, so it survives a power loss too."""
        with _translated(), self._writer(), self.engine.connect() as conn:
            if durable:
                conn.execution_options(**{DURABLE: True})
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction in Core; see `reading`."""
        with _translated(), self.engine.connect() as conn:
            conn.execution_options(**{READ_ONLY: True})
            with conn.begin():
                yield conn

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """Statements that are each a transaction of their own (PostgreSQL): one round trip
        instead of BEGIN, the statement and COMMIT."""
        with _translated(), self.engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only transaction. On SQLite it is a deferred BEGIN: under WAL a reader sees a
        consistent snapshot without waiting for (or blocking) the agent's writes."""
        with _translated(), self.engine.connect() as conn:
            conn.execution_options(**{READ_ONLY: True})
            with Session(bind=conn, expire_on_commit=False) as session, session.begin():
                yield session

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
        if self._writer_lock is not None:
            self._writer_lock.close()


class WriterLock:
    """SQLite has one writer at a time. Writers queue for it here, each woken the moment it is
    free: threads of this process on a lock, processes on an flock of a file beside the
    database. Left to SQLite's busy handler, they would sleep 1, 2, 5 … 100 ms between tries;
    that sleep was most of the p99 of concurrent submits. SQLite's own locking still decides;
    a writer that does not take this lock (a migration, the sqlite3 shell) is merely not
    queued."""

    def __init__(self, url: str) -> None:
        self._threads = threading.Lock()
        self._fd: int | None = None
        path = make_url(url).database
        self._path = f"{path}-writer.lock" if path not in (None, "", ":memory:") else None

    def _file(self) -> int | None:
        """The lock file, opened at the first write: a Database made for a folder that is
        gone or read-only by then queues only its threads (SQLite reports the real error)."""
        if self._fd is None and self._path is not None:
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                return None
        return self._fd

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._threads:
            fd = self._file()
            if fd is None:
                yield
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._threads:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


@contextmanager
def _translated() -> Iterator[None]:
    """A database that cannot be reached (or stays locked) is a 503, not a crash."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        raise DatabaseUnavailable(f"database unavailable: {exc.orig or exc}") from exc


def prepare_sqlite_path(url: str) -> None:
    """Create the folder of a SQLite database file, so a fresh checkout just works."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def _make_engine(url: str, *, echo: bool) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(url, echo=echo, pool_size=10, max_overflow=20)
        event.listen(engine, "checkout", _ping_if_idle)
        event.listen(engine, "checkin", _note_checkin)
        return engine
    prepare_sqlite_path(url)
    # A pool as large as the API's worker threads: a connection past the pool is closed after
    # use, and opening one again (WAL, pragmas) showed up in profiles under load.
    engine = create_engine(
        url,
        echo=echo,
        pool_size=20,
        max_overflow=40,
        connect_args={"check_same_thread": False, "timeout": 30},
    )
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _note_checkin(_dbapi_conn: Any, record: Any) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    """`pool_pre_ping`, but only for a connection idle for a while: a round trip before every
    transaction was a third of a claim on PostgreSQL. One in use a moment ago is alive; if the
    server restarted within that moment, its statement fails as unavailable (one 503, one
    skipped claim) and SQLAlchemy drops the pool's connections as disconnected."""
    checked_in = record.info.get("checked_in_at")
    if checked_in is not None and time.monotonic() - checked_in < PING_IF_IDLE_SECONDS:
        return
    try:
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        if not dbapi_conn.autocommit:
            dbapi_conn.rollback()  # the ping began a transaction: autocommit could not be set
    except Exception as exc:  # the pool retries the checkout with a new connection
        raise DisconnectionError(f"stale connection: {exc}") from exc


def _sqlite_on_connect(dbapi_conn: Any, record: Any) -> None:
    # Take transaction control from pysqlite so BEGIN IMMEDIATE below is what really runs:
    # a writer then holds the lock from its first statement and never fails on lock upgrade.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    record.info["synchronous"] = "NORMAL"
    cursor.close()


def _sqlite_on_begin(conn: Any) -> None:
    options = conn.get_execution_options()
    if options.get(READ_ONLY, False):
        conn.exec_driver_sql("BEGIN")
        return
    # NORMAL: a commit survives this process crashing, and WAL is synced at checkpoints.
    # FULL (durable writes: a submit's 201, a cancel): the commit also waits for an fsync of
    # the WAL, ~0.2-1 ms here, so it survives a power loss; group commit shares that fsync
    # between concurrent submits. The agent's own writes are rebuilt by reconciliation after
    # a crash, so they do not pay it.
    wanted = "FULL" if options.get(DURABLE, False) else "NORMAL"
    info = conn.connection.info
    if info.get("synchronous") != wanted:
        conn.exec_driver_sql(f"PRAGMA synchronous={wanted}")
        info["synchronous"] = wanted
    conn.exec_driver_sql("BEGIN IMMEDIATE")
