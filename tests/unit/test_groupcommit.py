"""Group commit: concurrent requests share a write, each gets its own outcome, none is lost."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from agent.db.groupcommit import GroupCommit


class Writer:
    """Records each batch; the first batch waits until released, so others pile up behind it."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, requests: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(requests))
        if len(self.batches) == 1:
            self.entered.set()
            assert self.release.wait(10)
        return [ValueError(f"odd {r}") if r % 2 else r * 10 for r in requests]


def test_requests_arriving_during_a_write_share_the_next_one() -> None:
    writer = Writer()
    commit: GroupCommit[int, int] = GroupCommit(writer)
    with ThreadPoolExecutor(16) as pool:
        first = pool.submit(commit, 0)
        assert writer.entered.wait(10)
        rest = {n: pool.submit(commit, n) for n in range(1, 16)}
        # Every other request is now waiting behind the first write.
        while sum(1 for _ in commit._waiting) < 15:
            threading.Event().wait(0.001)
        writer.release.set()
        assert first.result(10) == 0
        for n, future in rest.items():
            if n % 2:
                with pytest.raises(ValueError, match=f"odd {n}"):
                    future.result(10)
            else:
                assert future.result(10) == n * 10
    assert writer.batches[0] == [0]
    assert sorted(writer.batches[1]) == list(range(1, 16))
    assert len(writer.batches) == 2


def test_a_failed_write_fails_its_whole_batch_and_the_next_one_still_runs() -> None:
    calls: list[list[str]] = []

    def write(requests: Sequence[str]) -> list[str | BaseException]:
        calls.append(list(requests))
        if "boom" in requests:
            raise RuntimeError("database unavailable")
        return [r.upper() for r in requests]

    commit: GroupCommit[str, str] = GroupCommit(write)
    with pytest.raises(RuntimeError, match="database unavailable"):
        commit("boom")
    assert commit("ok") == "OK"


def test_a_writer_that_loses_an_outcome_is_an_error_not_a_hang() -> None:
    commit: GroupCommit[int, int] = GroupCommit(lambda requests: [])
    with pytest.raises(RuntimeError, match="0 outcomes for 1"):
        commit(1)
    with pytest.raises(RuntimeError):
        commit(2)  # the lead was handed back: the next caller is not stuck behind the failure


def test_many_threads_each_get_their_own_result_and_batches_stay_bounded() -> None:
    seen: list[int] = []
    sizes: list[int] = []
    writing = threading.Semaphore(1)  # only ever one writer at a time: the leader

    def write(requests: Sequence[int]) -> list[int | BaseException]:
        assert writing.acquire(blocking=False), "two batches written at once"
        seen.extend(requests)
        sizes.append(len(requests))
        writing.release()
        return [r + 1 for r in requests]

    commit: GroupCommit[int, int] = GroupCommit(write, max_batch=4)
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(commit, range(2000)))
    assert results == [n + 1 for n in range(2000)]
    assert sorted(seen) == list(range(2000))
    assert max(sizes) <= 4
