"""The agent's side of training metrics: one attempt's JSON lines, from its log pump to the
database.

On the pump's thread a line costs one byte check (is it ``{``?) and a candidate line one
append: nothing is parsed there and nothing waits on the database. A thread of the attempt's
own (started only once a candidate line appears) parses what came in and stores it as one
batch at most once a second, and `close()` stores the rest when the attempt ends. The points
follow the log exactly: a line the log writer skipped as a replay (a reopened stream, a
re-attach) gives no point, so no point is doubled.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

from agent.core.loglines import RawLine
from agent.core.training import (
    DEFAULT_MAX_POINTS,
    MAX_KEYS,
    MetricPoint,
    MetricReader,
    kept_after_thinning,
    thin_per_key,
)
from agent.db.metrics import MetricStore
from agent.metrics import JOB_PROGRESS

log = logging.getLogger("trainyard.agent")

FLUSH_SECONDS = 1.0
MAX_LINES_PER_FLUSH = 2_000
"""JSON lines parsed per flush (so per second). A script printing more is thinned here, first
and last kept — its series would be thinned to max_points anyway — so that parsing (about
10 µs a line) never competes with the log for the CPU."""
MAX_POINTS_PER_FLUSH = 4_000
"""Points written per flush, shared among the batch's keys (each at most max_points); more
are thinned per key, first and newest kept. Also what is held while the database is down."""
MAX_PENDING_LINES = 20 * MAX_LINES_PER_FLUSH
"""Candidate lines held for the metrics thread (say while the database is slow); past this
the pump's thread thins them to half (amortised O(1) a line, first and last kept)."""
JOIN_SECONDS = 60.0


class TrainingWatch:
    """Feed it every batch the pump writes (`on_lines`), then `close()` once the pump is done."""

    def __init__(
        self,
        store: MetricStore,
        *,
        job_id: str,
        attempt: int,
        lease_token: str,
        attempt_started: float | None,
        written: Callable[[], int],
        max_points: int = DEFAULT_MAX_POINTS,
        note: Callable[[str], None] | None = None,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        self._store = store
        self.job_id = job_id
        self.attempt = attempt
        self._token = lease_token
        self._attempt_started = attempt_started
        self._written = written
        self._seen = written()
        self._max_points = max_points
        self._note = note
        self._flush_seconds = flush_seconds
        self._lines: list[tuple[bytes, bytes]] = []  # (timestamp, text) not yet parsed
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reader: MetricReader | None = None
        self._unsaved: list[MetricPoint] = []
        self._fenced = False  # the lease moved on: this attempt writes no more
        self._failing = False
        self._noted_refused = False
        self._gauge_set = False
        self.lines_seen = 0
        self.points_stored = 0

    # --- the pump's thread: cheap ------------------------------------------------------------

    def on_lines(self, batch: list[RawLine]) -> None:
        """Keep the JSON-object candidates among the lines the log writer just wrote."""
        written = self._written()
        new, self._seen = written - self._seen, written
        if new <= 0:
            return  # every line of the batch was a replay the log already had
        if new < len(batch):
            batch = batch[-new:]  # the writer drops replayed lines from the front only
        found = [
            (ts, text) for stream, ts, text in batch if text[:1] == b"{" and stream == "stdout"
        ]
        if not found:
            return
        with self._lock:
            self._lines += found
            self.lines_seen += len(found)
            if len(self._lines) > MAX_PENDING_LINES:
                kept = kept_after_thinning(len(self._lines), MAX_PENDING_LINES // 2)
                self._lines = [self._lines[i] for i in kept]
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name=f"metrics-{self.job_id[:12]}", daemon=True
                )
                self._thread.start()

    # --- its own thread ----------------------------------------------------------------------

    def _run(self) -> None:
        # At once (progress shows as soon as there is any), then at most once a period.
        while True:
            self.flush()
            if self._stop.wait(self._flush_seconds):
                return

    def close(self) -> None:
        """Store what is left and forget the job's progress gauge; the attempt is over."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(JOIN_SECONDS)
        self.flush()
        if self._unsaved and not self._fenced:
            self._say(
                f"training metrics: {len(self._unsaved)} points could not be stored "
                "(the database did not take them)"
            )
        if self._gauge_set:
            with contextlib.suppress(KeyError):  # already gone
                JOB_PROGRESS.remove(self.job_id)

    def flush(self) -> None:
        """Parse what came in and store it with the job's summary, as one batch."""
        with self._flush_lock:
            try:
                self._flush()
            except Exception as exc:  # the metrics must never take the attempt down
                if not self._failing:
                    log.warning(
                        "job %s attempt %d: metrics not stored: %s", self.job_id, self.attempt, exc
                    )
                self._failing = True

    def _flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
        if self._fenced or (not lines and not self._unsaved):
            return
        if self._reader is None:
            try:
                summary = self._store.summary(self.job_id)
            except Exception:
                with self._lock:
                    self._lines[:0] = lines  # read again next time
                raise
            self._reader = MetricReader(
                self.attempt, attempt_started=self._attempt_started, summary=summary
            )
        if len(lines) > MAX_LINES_PER_FLUSH:
            lines = [lines[i] for i in kept_after_thinning(len(lines), MAX_LINES_PER_FLUSH)]
        reader = self._reader
        for timestamp, text in lines:
            self._unsaved += reader.read(timestamp, text)
        keys = len({point.key for point in self._unsaved})
        per_key = max(2, min(self._max_points, MAX_POINTS_PER_FLUSH // max(1, keys)))
        self._unsaved = thin_per_key(self._unsaved, per_key)
        self._note_refused(reader)
        if not self._unsaved:
            return
        stored = self._store.append(
            self.job_id,
            self._token,
            self._unsaved,
            reader.summary(),
            max_points=self._max_points,
        )
        if not stored:
            log.info(
                "job %s attempt %d: lease moved on; metrics no longer stored",
                self.job_id,
                self.attempt,
            )
            self._fenced = True
            self._unsaved = []
            return
        if self._failing:
            log.info("job %s attempt %d: metrics stored again", self.job_id, self.attempt)
            self._failing = False
        self.points_stored += len(self._unsaved)
        self._unsaved = []
        if reader.progress is not None and not self._stop.is_set():
            JOB_PROGRESS.labels(self.job_id).set(reader.progress.progress)
            self._gauge_set = True

    def _note_refused(self, reader: MetricReader) -> None:
        if reader.refused and not self._noted_refused:
            self._noted_refused = True
            names = ", ".join(repr(k) for k in reader.refused_keys)
            self._say(
                f"training metrics: this job has {MAX_KEYS} keys, the most one job keeps; "
                f"new keys are ignored ({names}, …)"
            )

    def _say(self, message: str) -> None:
        if self._note is not None:
            try:
                self._note(message)
            except Exception as exc:  # e.g. the log is already closed
                log.warning("job %s: %s (%s)", self.job_id, message, exc)
