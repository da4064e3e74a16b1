"""Reads never wait for SQLite's write lock (WAL + deferred BEGIN); writes serialise."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import text

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


def test_reads_proceed_while_a_writer_holds_the_lock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    upgrade(url)
    db = Database(url)
    queue = JobQueue(db)
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
    db.dispose()
