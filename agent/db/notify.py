"""PostgreSQL LISTEN/NOTIFY: wake agents in other processes the moment work or a cancel arrives.

SQLite has no such channel; there the embedded agent is woken in-process and others poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

log = logging.getLogger("trainyard.agent")

JOBS_CHANNEL = "trainyard_jobs"
CANCEL_CHANNEL = "trainyard_cancel"
RECONNECT_SECONDS = 2.0


def notify(conn: Connection, channel: str, payload: str) -> None:
    """Queue a notification; PostgreSQL delivers it when the transaction commits."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload}
        )


class Listener:
    """A thread holding one connection that LISTENs and calls back on each notification."""

    def __init__(self, url: str, on_notify: Callable[[str, str], None]) -> None:
        self._conninfo = (
            make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        self._on_notify = on_notify
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {JOBS_CHANNEL}")
                    conn.execute(f"LISTEN {CANCEL_CHANNEL}")
                    # Anything sent while not listening is caught by the caller's next poll.
                    self._on_notify(JOBS_CHANNEL, "")
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._on_notify(note.channel, note.payload)
            except psycopg.Error as exc:
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
                self._stop.wait(RECONNECT_SECONDS)
