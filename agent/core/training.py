"""Training metrics from what a job already prints — pure.

A training script that prints one JSON object per line on stdout, such as
``{"epoch": 2, "epochs": 5, "step": 900, "loss": 0.41, "accuracy": 0.88}``, gets curves,
progress and an ETA with no SDK. This module decides what such a line means: which fields
are metrics (finite numbers, not booleans), what the progress is, how fast it moves, and
which old points to thin out once a series is long. Storage and threads live elsewhere
(``agent/db/metrics.py``, ``agent/worker/training_watch.py``).

Every bound here is a defence against a hostile or careless script: a line longer than
64 KiB is not parsed, a job has at most 64 keys of at most 64 characters, and a series keeps
at most ``max_points`` points (older ones are thinned, the newest is always kept).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

MAX_METRIC_LINE_BYTES: Final = 64 * 1024
"""A JSON line longer than this is only a log line (the log itself cuts lines there too)."""
MAX_KEYS: Final = 64
"""Most distinct metric keys one job stores; later new keys are ignored."""
MAX_KEY_LENGTH: Final = 64
DEFAULT_MAX_POINTS: Final = 1000
"""Default bound on the points of one key of one job (TRAINYARD_METRICS_MAX_POINTS)."""
MIN_MAX_POINTS: Final = 10
MAX_MAX_POINTS: Final = 1_000_000

EPOCH: Final = "epoch"
STEP: Final = "step"
EPOCH_TOTALS: Final = ("epochs", "total_epochs", "num_epochs")
"""Keys read as the number of epochs (the first one present wins)."""
STEP_TOTALS: Final = ("total_steps", "max_steps", "num_steps")
"""Keys read as the number of steps (the first one present wins)."""

Number = int | float


# --- one line --------------------------------------------------------------------------------


def is_candidate(text: bytes) -> bool:
    """The one cheap check every log line pays: could it be a JSON object?"""
    return text[:1] == b"{"


def numeric_fields(text: bytes) -> dict[str, Number] | None:
    """The metrics of a line that is one JSON object: its top-level finite numbers (booleans
    excluded) whose key is 1 to 64 printable characters. None for any other line: not JSON,
    not an object, broken, or longer than 64 KiB — it stays just a log line."""
    if len(text) > MAX_METRIC_LINE_BYTES or not is_candidate(text):
        return None
    try:
        loaded = json.loads(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(loaded, dict):
        return None
    fields: dict[str, Number] = {}
    for key, value in loaded.items():
        kind = type(value)  # exact: bool is an int subclass and is not a metric
        if kind is not int and kind is not float:
            continue
        if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isprintable():
            continue  # also keeps NUL and lone surrogates away from the database
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an int past the float range
            continue
        if finite:
            fields[key] = value
    return fields


def wall_time(timestamp: bytes) -> datetime | None:
    """A log line's engine timestamp (RFC 3339, nine fractional digits, UTC) to the
    microsecond; None if it is not one."""
    try:
        return datetime.fromisoformat(timestamp[:26].decode("ascii")).replace(tzinfo=UTC)
    except (ValueError, UnicodeDecodeError):
        return None


# --- progress and ETA ------------------------------------------------------------------------


def _total(values: Mapping[str, Number], names: Iterable[str]) -> float | None:
    for name in names:
        total = values.get(name)
        if total is not None:
            return float(total) if total > 0 else None
    return None


def progress_of(values: Mapping[str, Number]) -> float | None:
    """0 to 1 from the last known values: ``step`` / (``total_steps`` | ``max_steps`` |
    ``num_steps``), else ``epoch`` / (``epochs`` | ``total_epochs`` | ``num_epochs``).
    Counters count what is done: ``{"epoch": 2, "epochs": 4}`` is half way."""
    for counter, totals in ((STEP, STEP_TOTALS), (EPOCH, EPOCH_TOTALS)):
        done = values.get(counter)
        total = _total(values, totals)
        if done is not None and total is not None:
            return min(1.0, max(0.0, float(done) / total))
    return None


@dataclass(frozen=True)
class ProgressState:
    """Where a job's progress stands, and what its rate is measured from.

    The rate is measured over the current attempt: from its first progress sample to its
    latest one; while it has only one, from when the attempt started (at the progress the
    previous attempt reached, which a resumed attempt continues from). Times are Unix
    seconds."""

    attempt: int
    progress: float
    at: float
    first_progress: float
    first_at: float
    base_progress: float | None = None
    base_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: Any) -> ProgressState | None:
        """The state as stored; None for anything that is not one (it is only derived data)."""
        if not isinstance(data, Mapping) or type(data.get("attempt")) is not int:
            return None
        values = [_number(data.get(name)) for name in _STATE_NUMBERS]
        progress, at, first_progress, first_at, base_progress, base_at = values
        if progress is None or at is None or first_progress is None or first_at is None:
            return None
        return cls(data["attempt"], progress, at, first_progress, first_at, base_progress, base_at)


_STATE_NUMBERS = ("progress", "at", "first_progress", "first_at", "base_progress", "base_at")


def _number(value: Any) -> float | None:
    return float(value) if type(value) in (int, float) and math.isfinite(value) else None


def advance(
    state: ProgressState | None,
    *,
    attempt: int,
    attempt_started: float | None,
    progress: float,
    at: float,
) -> ProgressState:
    """The state after a new progress sample of `attempt` at time `at`."""
    if state is not None and state.attempt == attempt:
        return replace(state, progress=progress, at=max(at, state.at))
    carried = state.progress if state is not None else 0.0
    usable = attempt_started is not None and attempt_started < at and carried <= progress
    return ProgressState(
        attempt=attempt,
        progress=progress,
        at=at,
        first_progress=progress,
        first_at=at,
        base_progress=carried if usable else None,
        base_at=attempt_started if usable else None,
    )


def rate_of(state: ProgressState) -> float | None:
    """Progress per second over the current attempt; None when it cannot be told yet."""
    if state.at > state.first_at and state.progress > state.first_progress:
        return (state.progress - state.first_progress) / (state.at - state.first_at)
    base, since = state.base_progress, state.base_at
    if base is not None and since is not None and state.at > since and state.progress > base:
        return (state.progress - base) / (state.at - since)
    return None


def eta_seconds(state: ProgressState | None, now: float) -> float | None:
    """Seconds until progress reaches 1 at the current attempt's rate, counted from the
    latest sample (so it counts down between samples, and stays at 0 when overdue)."""
    if state is None:
        return None
    if state.progress >= 1.0:
        return 0.0
    rate = rate_of(state)
    if rate is None:
        return None
    return max(0.0, state.at + (1.0 - state.progress) / rate - now)


# --- bounded series --------------------------------------------------------------------------


def kept_after_thinning(count: int, max_points: int) -> list[int]:
    """Which of `count` points (oldest first) a series keeps to hold at most `max_points`:
    while too long, every other point of the older half goes (the first one stays). The newest
    point is never dropped, the start of the curve stays, and older stretches get sparser.
    Deterministic, so any process thinning the same series drops the same points."""
    if max_points < 2:
        raise ValueError("a series keeps at least 2 points")
    kept = list(range(count))
    while len(kept) > max_points:
        half = (len(kept) + 1) // 2
        kept = kept[:half:2] + kept[half:]
    return kept


def dropped_by_thinning(count: int, max_points: int) -> list[int]:
    """The complement of `kept_after_thinning`: indexes (oldest first) to delete."""
    if count <= max_points:
        return []
    kept = set(kept_after_thinning(count, max_points))
    return [i for i in range(count) if i not in kept]


# --- one attempt's reader --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricPoint:
    """One value of one key, from one line of one attempt."""

    key: str
    value: float
    at: datetime
    attempt: int
    step: float | None = None
    epoch: float | None = None


def thin_per_key(points: list[MetricPoint], per_key: int) -> list[MetricPoint]:
    """`points` (oldest first) with at most `per_key` of each key, thinned as a stored series is
    (`kept_after_thinning`): the first and the newest of each key stay. Order is kept."""
    by_key: dict[str, list[int]] = {}
    for index, point in enumerate(points):
        by_key.setdefault(point.key, []).append(index)
    if all(len(indexes) <= per_key for indexes in by_key.values()):
        return points
    keep: set[int] = set()
    for indexes in by_key.values():
        keep.update(indexes[i] for i in kept_after_thinning(len(indexes), per_key))
    return [point for index, point in enumerate(points) if index in keep]


@dataclass(frozen=True)
class TrainingSummary:
    """What a job's metrics say now: the last value of each key, and the progress state."""

    latest: dict[str, Number]
    progress: ProgressState | None = None

    @property
    def fraction(self) -> float | None:
        return self.progress.progress if self.progress is not None else None

    def eta_seconds(self, now: float) -> float | None:
        return eta_seconds(self.progress, now)


@dataclass(frozen=True)
class SeriesPage:
    """Points by key, oldest first; `cursor` is the id of the last point returned (pass it
    as `since` to get only newer ones); `more` when `limit` cut the page short."""

    series: dict[str, list[MetricPoint]]
    cursor: int
    more: bool


class MetricReader:
    """Turns one attempt's JSON lines into metric points, keeping the job's last value of each
    key and its progress. It continues a job's earlier state (keys already stored, the last
    progress), so a resumed attempt continues the same curve. Not thread-safe."""

    def __init__(
        self,
        attempt: int,
        *,
        attempt_started: float | None,
        summary: TrainingSummary | None = None,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.attempt = attempt
        self.attempt_started = attempt_started
        self.latest: dict[str, Number] = dict(summary.latest) if summary else {}
        self.progress: ProgressState | None = summary.progress if summary else None
        self.max_keys = max_keys
        self.refused = 0  # fields of new keys ignored because the job has max_keys already
        self.refused_keys: list[str] = []  # the first few of them, to say which

    def read(self, timestamp: bytes, text: bytes) -> list[MetricPoint]:
        """The points of one stdout line (none for a line that is not a JSON object)."""
        fields = numeric_fields(text)
        if not fields:
            return []
        at = wall_time(timestamp)
        if at is None:
            return []
        fields = self._admit(fields)
        step, epoch = fields.get(STEP), fields.get(EPOCH)
        step_f = float(step) if step is not None else None
        epoch_f = float(epoch) if epoch is not None else None
        self.latest.update(fields)
        if step is not None or epoch is not None:  # only a line with a counter is a sample
            progress = progress_of(self.latest)
            if progress is not None:
                self.progress = advance(
                    self.progress,
                    attempt=self.attempt,
                    attempt_started=self.attempt_started,
                    progress=progress,
                    at=at.timestamp(),
                )
        return [
            MetricPoint(key, float(value), at, self.attempt, step_f, epoch_f)
            for key, value in fields.items()
        ]

    def summary(self) -> TrainingSummary:
        return TrainingSummary(dict(self.latest), self.progress)

    def _admit(self, fields: dict[str, Number]) -> dict[str, Number]:
        """Fields of keys the job already has, and new keys while there is room."""
        latest = self.latest
        if len(latest) + len(fields) <= self.max_keys or all(k in latest for k in fields):
            return fields
        admitted: dict[str, Number] = {}
        room = self.max_keys - len(latest)
        for key, value in fields.items():
            if key in latest:
                admitted[key] = value
            elif room > 0:
                admitted[key] = value
                room -= 1
            else:
                self.refused += 1
                if len(self.refused_keys) < 5 and key not in self.refused_keys:
                    self.refused_keys.append(key)
        return admitted
