"""Group commit: concurrent callers' writes share one transaction, one commit and one fsync.

No thread of its own. The first caller to arrive leads: it writes every request waiting at that
moment (its own first) in one transaction, hands each caller its own outcome, and passes the
lead to the oldest request that arrived meanwhile. A caller returns only once the transaction
holding its write has committed, so a 201 still means the row is durable.

A caller in an event loop (`call_async`) waits without a thread: when the lead is its turn, the
batch is written in a worker thread of the loop's executor, so a batch costs one hand-off to a
thread instead of one per request. The lead passes on even if that caller has stopped waiting.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_BATCH = 256
"""Most requests in one transaction: bounds how long the lock is held and a batch's memory."""


class _Waiter(Generic[T, R]):
    __slots__ = ("done", "error", "lead", "request", "result", "wake")

    def __init__(self, request: T, wake: Callable[[], None] | None = None) -> None:
        self.request = request
        self.done = threading.Event()
        self.wake = wake  # an async caller's: called from the writing thread instead of done
        self.lead = False  # woken to lead the next batch, not with an outcome
        self.result: R | None = None
        self.error: BaseException | None = None

    def signal(self) -> None:
        if self.wake is not None:
            self.wake()
        else:
            self.done.set()

    def outcome(self) -> R:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class GroupCommit(Generic[T, R]):
    """`write(requests)` returns one outcome per request, a result or the exception that
    request alone gets; an exception it raises goes to every request of the batch."""

    def __init__(
        self,
        write: Callable[[Sequence[T]], Sequence[R | BaseException]],
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._waiting: list[_Waiter[T, R]] = []
        self._leading = False

    def __call__(self, request: T) -> R:
        waiter: _Waiter[T, R] = _Waiter(request)
        with self._lock:
            self._waiting.append(waiter)
            follow = self._leading
            self._leading = True
        if follow:
            waiter.done.wait()
            if not waiter.lead:
                return waiter.outcome()
        self._lead()
        return waiter.outcome()

    async def call_async(self, request: T) -> R:
        """`self(request)` from an event loop."""
        loop = asyncio.get_running_loop()
        decided = asyncio.Event()

        def woken() -> None:  # in the loop
            if waiter.lead:  # its turn to lead: a worker thread writes the batch it heads
                waiter.lead = False
                loop.run_in_executor(None, self._lead)
            else:
                decided.set()

        def wake() -> None:  # in the writing thread
            loop.call_soon_threadsafe(woken)

        waiter: _Waiter[T, R] = _Waiter(request, wake=wake)
        with self._lock:
            self._waiting.append(waiter)
            follow = self._leading
            self._leading = True
        if not follow:
            loop.run_in_executor(None, self._lead)
        await decided.wait()
        return waiter.outcome()

    def _lead(self) -> None:
        with self._lock:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
        try:
            outcomes = list(self._write([w.request for w in batch]))
            if len(outcomes) != len(batch):
                raise RuntimeError(f"group commit: {len(outcomes)} outcomes for {len(batch)}")
        except BaseException as exc:  # the whole batch failed: each caller gets why
            outcomes = [exc] * len(batch)
        for waiter, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                waiter.error = outcome
            else:
                waiter.result = outcome
            waiter.lead = False
            waiter.signal()
        with self._lock:
            if self._waiting:
                successor = self._waiting[0]
                successor.lead = True
                successor.signal()
            else:
                self._leading = False
