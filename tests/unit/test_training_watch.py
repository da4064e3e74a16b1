"""The agent's side of training metrics (agent/worker/training_watch.py): JSON lines of an
attempt's stdout reach the database in batches, exactly once, fenced by the lease; and the
whole path through AttemptExecution on the FakeRuntime with a real SQLite queue."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from pydantic import ValidationError
from sqlalchemy import update

from agent.config import Settings
from agent.core.loglines import RawLine
from agent.core.records import Claim
from agent.core.retry import RetryPolicy
from agent.core.scheduling import Capacity
from agent.core.training import MAX_KEYS
from agent.db.engine import Database
from agent.db.metrics import MetricStore
from agent.db.migrate import upgrade
from agent.db.models import JobRow
from agent.db.queue import JobQueue
from agent.joblog import job_log_path
from agent.metrics import REGISTRY
from agent.runtime.fake import Behaviour, FakeRuntime
from agent.worker.execution import AttemptExecution
from agent.worker.training_watch import TrainingWatch
from tests.unit.jobs_for_tests import new_job


@dataclass
class World:
    settings: Settings
    queue: JobQueue
    store: MetricStore

    def claim(self, **job: object) -> Claim:
        self.queue.submit(new_job(**job), max_queued=100)
        capacity = Capacity(slots=4, memory_bytes=64 * 2**30, cpus=64.0, gpu_ids=())
        claim = self.queue.claim(self.settings.agent_id, capacity, lease_seconds=60)
        assert claim is not None
        return claim


@pytest.fixture
def world(make_settings: Callable[..., Settings], sqlite_url: str) -> Iterator[World]:
    upgrade(sqlite_url)
    db = Database(sqlite_url)
    settings = make_settings(database_url=sqlite_url, stop_grace_seconds=0.5, log_stall_seconds=2)
    yield World(settings, JobQueue(db), MetricStore(db))
    db.dispose()


class Written:
    """Stands in for the log writer's count of container lines written."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        return self.count


def stamp(i: int) -> bytes:
    return f"2026-01-01T00:00:{i:02d}.000000000Z".encode()


def epoch_line(i: int, epochs: int = 4) -> RawLine:
    text = json.dumps({"epoch": i, "epochs": epochs, "loss": 1.0 / i})
    return ("stdout", stamp(i), text.encode())


def watch(world: World, claim: Claim, written: Written, **kwargs: object) -> TrainingWatch:
    return TrainingWatch(
        world.store,
        job_id=claim.job.id,
        attempt=claim.attempt,
        lease_token=claim.lease_token,
        attempt_started=None,
        written=written,
        flush_seconds=60,  # the tests flush by hand
        **kwargs,  # type: ignore[arg-type]
    )


def feed(training: TrainingWatch, written: Written, batch: list[RawLine], new: int) -> None:
    """The pump's order: the writer writes (dropping replays from the front), then on_lines."""
    written.count += new
    training.on_lines(batch)


def test_only_stdout_json_objects_the_log_wrote_become_points(world: World) -> None:
    claim = world.claim()
    written = Written()
    training = watch(world, claim, written)
    batch = [
        epoch_line(1),
        ("stdout", stamp(1), b"plain text"),
        ("stderr", stamp(1), b'{"loss": 99}'),  # stderr is not read
        ("stdout", stamp(1), b'{"broken'),
        epoch_line(2),
    ]
    feed(training, written, batch, new=len(batch))
    # A reopened stream replays lines 1-2; the writer drops both and writes line 3.
    feed(training, written, [epoch_line(1), epoch_line(2), epoch_line(3)], new=1)
    feed(training, written, [epoch_line(3)], new=0)  # all replay
    training.close()

    page = world.store.series(claim.job.id)
    assert [p.epoch for p in page.series["loss"]] == [1.0, 2.0, 3.0]
    assert set(page.series) == {"epoch", "epochs", "loss"}
    summary = world.store.summary(claim.job.id)
    assert summary is not None
    assert summary.latest == {"epoch": 3, "epochs": 4, "loss": 1.0 / 3}
    assert summary.fraction == 0.75
    assert training.points_stored == 9


def test_no_json_no_thread_and_nothing_stored(world: World) -> None:
    claim = world.claim()
    written = Written()
    training = watch(world, claim, written)
    threads = threading.active_count()
    feed(training, written, [("stdout", stamp(1), b"epoch 1 loss 0.5")] * 100, new=100)
    assert threading.active_count() == threads
    training.close()
    assert world.store.summary(claim.job.id) is None


def test_points_are_batched_not_written_per_line(world: World) -> None:
    claim = world.claim()
    written = Written()
    training = watch(world, claim, written)  # flushes at its first line, then every 60 s

    def stored() -> int:
        return len(world.store.series(claim.job.id).series.get("loss", []))

    feed(training, written, [epoch_line(1)], new=1)
    deadline = time.monotonic() + 10
    while stored() < 1:
        assert time.monotonic() < deadline, "the first line was never stored"
        time.sleep(0.01)
    for i in range(2, 5):
        feed(training, written, [epoch_line(i)], new=1)
    time.sleep(0.2)
    assert stored() == 1  # not one write per line
    training.flush()
    assert stored() == 4
    training.close()


def test_a_lost_lease_stores_nothing_more(world: World) -> None:
    claim = world.claim()
    written = Written()
    training = watch(world, claim, written)
    feed(training, written, [epoch_line(1)], new=1)
    training.flush()
    with world.queue.db.transaction() as s:  # another agent took the job over
        s.execute(update(JobRow).where(JobRow.id == claim.job.id).values(lease_token="other"))
    feed(training, written, [epoch_line(2)], new=1)
    training.close()
    assert [p.epoch for p in world.store.series(claim.job.id).series["loss"]] == [1.0]


def test_series_past_the_bound_are_thinned_keeping_the_last(world: World) -> None:
    claim = world.claim()
    written = Written()
    training = watch(world, claim, written, max_points=10)
    for i in range(1, 41):
        line = ("stdout", stamp(i % 60), json.dumps({"step": i, "loss": float(i)}).encode())
        feed(training, written, [line], new=1)
        if i % 7 == 0:
            training.flush()
    training.close()
    loss = world.store.series(claim.job.id).series["loss"]
    assert len(loss) <= 10
    assert loss[0].value == 1.0 and loss[-1].value == 40.0
    assert [p.step for p in loss] == sorted(p.step for p in loss)


def test_the_progress_gauge_lives_while_the_attempt_runs(world: World) -> None:
    claim = world.claim()
    written = Written()
    training = watch(world, claim, written)

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("trainyard_job_progress", {"job_id": claim.job.id})

    feed(training, written, [epoch_line(1)], new=1)
    training.flush()
    assert gauge() == 0.25
    feed(training, written, [epoch_line(3)], new=1)
    training.flush()
    assert gauge() == 0.75
    training.close()
    assert gauge() is None


def test_too_many_keys_are_noted_once(world: World) -> None:
    claim = world.claim()
    written = Written()
    notes: list[str] = []
    training = watch(world, claim, written, note=notes.append)
    many = json.dumps({f"k{i}": i for i in range(MAX_KEYS + 3)}).encode()
    feed(training, written, [("stdout", stamp(1), many)], new=1)
    training.flush()
    feed(training, written, [("stdout", stamp(2), many)], new=1)
    training.close()
    assert len(notes) == 1
    assert f"this job has {MAX_KEYS} keys" in notes[0] and "'k64'" in notes[0]
    assert len(world.store.series(claim.job.id).series) == MAX_KEYS


def test_max_points_is_a_setting_with_bounds() -> None:
    assert Settings().metrics_max_points == 1000
    assert Settings(metrics_max_points=250).metrics_max_points == 250
    for bad in (5, 2_000_000):
        with pytest.raises(ValidationError, match="metrics_max_points"):
            Settings(metrics_max_points=bad)


# --- through AttemptExecution ------------------------------------------------------------------


def test_an_attempt_stores_its_metrics_before_its_result(world: World) -> None:
    output = [("stdout", "training: epochs=3")]
    output += [
        ("stdout", json.dumps({"epoch": i, "epochs": 3, "loss": 1.0 / i})) for i in (1, 2, 3)
    ]
    output += [("stdout", "training complete")]
    runtime = FakeRuntime(lambda spec: Behaviour(output=output, run_seconds=0.05))
    claim = world.claim()
    done: list[AttemptExecution] = []
    execution = AttemptExecution(
        claim,
        settings=world.settings,
        queue=world.queue,
        runtime=runtime,
        policy=RetryPolicy(base_delay=0.2, jitter=0.0),
        on_done=done.append,
    )
    execution.run()

    assert done == [execution]
    job = world.queue.get(claim.job.id)
    assert job.status.value == "succeeded"
    loss = world.store.series(job.id, keys=["loss"]).series["loss"]
    assert [(p.epoch, p.attempt) for p in loss] == [(1.0, 1), (2.0, 1), (3.0, 1)]
    summary = world.store.summary(job.id)
    assert summary is not None and summary.fraction == 1.0
    # The log is untouched: every line, JSON or not, exactly once.
    text = job_log_path(world.settings.log_dir, job.id).read_text()
    assert text.count('"epoch": 2') == 1 and "training complete" in text


def test_lines_held_for_a_stuck_database_are_bounded(world: World) -> None:
    claim = world.claim()
    written = Written()
    training = watch(world, claim, written)
    training._stop.set()  # no metrics thread: as if it were stuck
    for i in range(100):
        batch = [epoch_line(1 + (i * 1000 + j) % 50) for j in range(1000)]
        feed(training, written, batch, new=len(batch))
    assert training.lines_seen == 100_000
    assert len(training._lines) <= 40_000
    training.close()
    assert len(world.store.series(claim.job.id).series["loss"]) <= 1000
