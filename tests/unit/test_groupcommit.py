"""Group commit: concurrent requests share a write, each gets its own outcome, none is lost."""

from __future__ import annotations

import asyncio
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


# --- callers in an event loop ----------------------------------------------------------------


def test_coroutines_share_batches_and_each_gets_its_own_outcome() -> None:
    writer = Writer()
    commit: GroupCommit[int, int] = GroupCommit(writer)

    async def main() -> list[int | str]:
        async def one(n: int) -> int | str:
            try:
                return await commit.call_async(n)
            except ValueError as exc:
                return str(exc)

        first = asyncio.create_task(one(0))
        while not writer.entered.is_set():  # the first batch is being written, in a thread
            await asyncio.sleep(0.001)
        rest = [asyncio.create_task(one(n)) for n in range(1, 16)]
        while len(commit._waiting) < 15:
            await asyncio.sleep(0.001)
        writer.release.set()
        return [await first, *[await task for task in rest]]

    results = asyncio.run(main())
    assert results == [n * 10 if n % 2 == 0 else f"odd {n}" for n in range(16)]
    assert writer.batches == [[0], list(range(1, 16))]


def test_threads_and_coroutines_hand_the_lead_to_each_other() -> None:
    seen: list[int] = []
    writing = threading.Semaphore(1)

    def write(requests: Sequence[int]) -> list[int | BaseException]:
        assert writing.acquire(blocking=False), "two batches written at once"
        seen.extend(requests)
        threading.Event().wait(0.0005)  # long enough for others to queue behind it
        writing.release()
        return [r + 1 for r in requests]

    commit: GroupCommit[int, int] = GroupCommit(write, max_batch=4)

    async def coroutines() -> list[int]:
        return list(await asyncio.gather(*(commit.call_async(n) for n in range(1000, 1500))))

    with ThreadPoolExecutor(9) as pool:
        threads = pool.map(commit, range(500))
        in_loop = pool.submit(asyncio.run, coroutines())
        assert list(threads) == [n + 1 for n in range(500)]
        assert in_loop.result(30) == [n + 1 for n in range(1000, 1500)]
    assert sorted(seen) == [*range(500), *range(1000, 1500)]


def test_a_coroutine_cancelled_while_waiting_still_passes_the_lead_on() -> None:
    """A client that goes away must not strand the callers queued behind its request: its
    write still happens, and the lead it was handed goes on to the next batch."""
    writer = Writer()
    commit: GroupCommit[int, int] = GroupCommit(writer)

    async def main() -> list[int]:
        first = asyncio.create_task(commit.call_async(0))
        while not writer.entered.is_set():
            await asyncio.sleep(0.001)
        cancelled = asyncio.create_task(commit.call_async(1))  # will head the next batch
        later = [asyncio.create_task(commit.call_async(n)) for n in (2, 4)]
        while len(commit._waiting) < 3:
            await asyncio.sleep(0.001)
        cancelled.cancel()
        writer.release.set()
        return [await first, *[await task for task in later]]

    assert asyncio.run(main()) == [0, 20, 40]
    assert writer.batches == [[0], [1, 2, 4]]
