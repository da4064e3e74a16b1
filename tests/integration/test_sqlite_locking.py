"""Reads never wait for SQLite's write lock (WAL + deferred BEGIN); writes serialise."""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text

from agent.core.errors import DatabaseUnavailable
from agent.core.records import NewJob
from agent.db.engine import Database
from agent.db.migrate import upgrade
from agent.db.queue import JobQueue


def _new_job() -> NewJob:
    return NewJob(
        name="j",
        image="img",
        command=None,
        params={},
        env={},
        memory_bytes=2**27,
        cpus=1.0,
        gpus=0,
        timeout_seconds=None,
        max_retries=0,
        priority=0,
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A migrated SQLite database."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    upgrade(url)
    return url


@pytest.fixture
def db(url: str) -> Iterator[Database]:
    db = Database(url)
    yield db
    db.dispose()


@pytest.fixture
def queue(db: Database) -> JobQueue:
    return JobQueue(db)


def test_reads_proceed_while_a_writer_holds_the_lock(db: Database, queue: JobQueue) -> None:
    job = queue.submit(_new_job(), max_queued=10)

    done = threading.Event()
    seen: list[str] = []
    with db.transaction() as writer:  # BEGIN IMMEDIATE: holds the write lock
        writer.execute(text("UPDATE jobs SET name = 'renamed' WHERE id = :id"), {"id": job.id})

        def read() -> None:
            seen.append(queue.get(job.id).name)
            seen.append(str(queue.stats().total))
            done.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        # Before reads were deferred this waited for the lock (30 s busy timeout, then failed).
        assert done.wait(10), "a read waited for the write lock"
    assert seen == ["j", "1"]  # the snapshot from before the uncommitted write
    assert queue.get(job.id).name == "renamed"


def _writer_lock_file(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///") + "-writer.lock")


def test_a_writer_of_another_process_holds_back_this_ones_writes_not_its_reads(
    url: str, queue: JobQueue
) -> None:
    """Writers of several processes queue on an flock beside the database (each woken the
    moment it is free) instead of sleeping in SQLite's busy handler."""
    first = queue.submit(_new_job(), max_queued=10)
    submitted = threading.Event()
    with _writer_lock_file(url).open("a") as other:  # another process's writer, as flock sees it
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        writer = threading.Thread(
            target=lambda: (queue.submit(_new_job(), max_queued=10), submitted.set()), daemon=True
        )
        writer.start()
        assert queue.get(first.id).name == "j"  # a read does not queue
        assert not submitted.wait(0.5), "a write went ahead of another process's writer"
        fcntl.flock(other.fileno(), fcntl.LOCK_UN)
        assert submitted.wait(10), "the write did not go ahead once the lock was free"
    writer.join(10)
    assert queue.stats().total == 2


def test_writes_from_many_threads_and_two_databases_all_land(url: str) -> None:
    dbs = [Database(url), Database(url)]  # two engines: two processes' worth of connections
    queues = [JobQueue(db) for db in dbs]

    def submit_many(i: int) -> list[str]:
        return [queues[i % 2].submit(_new_job(), max_queued=10_000).id for _ in range(25)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = [job_id for batch in pool.map(submit_many, range(8)) for job_id in batch]
    assert len(set(ids)) == 200
    assert queues[0].stats().total == 200
    for db in dbs:
        db.dispose()


def test_a_database_whose_folder_is_gone_reports_it_and_leaves_no_lock_file(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "gone"
    url = f"sqlite:///{folder / 'q.db'}"
    db = Database(url)  # creates the folder for a fresh checkout, writes nothing in it
    assert list(folder.iterdir()) == []
    folder.rmdir()
    with pytest.raises(DatabaseUnavailable), db.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    assert not folder.exists()
    db.dispose()
