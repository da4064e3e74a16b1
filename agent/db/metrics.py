"""Every SQL statement about training metrics: each job's series (`metric_points`) and its
summary (`job_training`: the last value of each key and the progress state).

Only the agent holding a job's lease writes its metrics, in batches (at most about once a
second per attempt, and once at its end), fenced by the lease token like every other write
about an attempt. A series past `max_points` is thinned in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from agent.core.training import (
    MetricPoint,
    ProgressState,
    SeriesPage,
    TrainingSummary,
    dropped_by_thinning,
)
from agent.db.engine import Database
from agent.db.models import JobRow, MetricPointRow, TrainingRow

DELETE_CHUNK = 500
"""Ids per DELETE … WHERE id IN (…): well inside every driver's bound-parameter limit."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class MetricStore:
    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

    # --- the agent's side ------------------------------------------------------------------

    def append(
        self,
        job_id: str,
        lease_token: str,
        points: list[MetricPoint],
        summary: TrainingSummary,
        *,
        max_points: int,
    ) -> bool:
        """Store a batch of points and the job's summary; thin every series the batch made
        longer than `max_points`. False (and nothing written) when the lease moved on."""
        with self.db.transaction() as s:
            fence = select(JobRow.lease_token).where(JobRow.id == job_id)
            if not self.db.is_sqlite:
                # A claim by another agent waits for this batch (SQLite's BEGIN IMMEDIATE
                # already serialises writers): no point of an old attempt lands after it.
                fence = fence.with_for_update(read=True)
            if s.scalar(fence) != lease_token:
                return False
            if points:
                s.execute(
                    insert(MetricPointRow),
                    [
                        {
                            "job_id": job_id,
                            "attempt": p.attempt,
                            "key": p.key,
                            "value": p.value,
                            "step": p.step,
                            "epoch": p.epoch,
                            "at": p.at,
                        }
                        for p in points
                    ],
                )
            self._store_summary(s, job_id, summary)
            if points:
                self._thin(s, job_id, {p.key for p in points}, max_points)
        return True

    def _store_summary(self, s: Session, job_id: str, summary: TrainingSummary) -> None:
        row = s.get(TrainingRow, job_id)
        if row is None:
            row = TrainingRow(job_id=job_id)
            s.add(row)
        row.latest = dict(summary.latest)
        row.progress = summary.fraction
        row.progress_state = summary.progress.to_json() if summary.progress else None
        row.updated_at = self.clock()

    def _thin(self, s: Session, job_id: str, keys: Iterable[str], max_points: int) -> None:
        counts = s.execute(
            select(MetricPointRow.key, func.count())
            .where(MetricPointRow.job_id == job_id, MetricPointRow.key.in_(sorted(keys)))
            .group_by(MetricPointRow.key)
        )
        for key, count in list(counts):
            if count <= max_points:
                continue
            ids = s.scalars(
                select(MetricPointRow.id)
                .where(MetricPointRow.job_id == job_id, MetricPointRow.key == key)
                .order_by(MetricPointRow.id)
            ).all()
            drop = [ids[i] for i in dropped_by_thinning(len(ids), max_points)]
            for start in range(0, len(drop), DELETE_CHUNK):
                chunk = drop[start : start + DELETE_CHUNK]
                s.execute(delete(MetricPointRow).where(MetricPointRow.id.in_(chunk)))

    # --- reads -----------------------------------------------------------------------------

    def summary(self, job_id: str) -> TrainingSummary | None:
        return self.summaries([job_id]).get(job_id)

    def summaries(self, job_ids: Iterable[str]) -> dict[str, TrainingSummary]:
        """The summaries of these jobs (those that have one), in one query."""
        ids = list(job_ids)
        if not ids:
            return {}
        with self.db.reading() as s:
            rows = s.scalars(select(TrainingRow).where(TrainingRow.job_id.in_(ids))).all()
            return {
                row.job_id: TrainingSummary(
                    dict(row.latest or {}), ProgressState.from_json(row.progress_state)
                )
                for row in rows
            }

    def series(
        self,
        job_id: str,
        *,
        keys: Iterable[str] | None = None,
        since: int | None = None,
        limit: int = 10_000,
    ) -> SeriesPage:
        """Points of a job after the cursor `since`, oldest first, at most `limit`."""
        query = select(
            MetricPointRow.id,
            MetricPointRow.key,
            MetricPointRow.value,
            MetricPointRow.at,
            MetricPointRow.attempt,
            MetricPointRow.step,
            MetricPointRow.epoch,
        ).where(MetricPointRow.job_id == job_id)
        if keys is not None:
            query = query.where(MetricPointRow.key.in_(sorted(set(keys))))
        if since is not None:
            query = query.where(MetricPointRow.id > since)
        query = query.order_by(MetricPointRow.id).limit(limit + 1)
        with self.db.reading() as s:
            rows = s.execute(query).all()
        more = len(rows) > limit
        rows = rows[:limit]
        series: dict[str, list[MetricPoint]] = {}
        for _, key, value, at, attempt, step, epoch in rows:
            series.setdefault(key, []).append(MetricPoint(key, value, at, attempt, step, epoch))
        cursor = rows[-1][0] if rows else (since or 0)
        return SeriesPage(series, int(cursor), more)
