"""The next job's container, created while every slot of this agent is busy.

A slot's critical path from one job to the next is claim → create → start. While every slot
is busy, the agent creates the container of the job its next claim most likely takes (the
queue's due head, `JobQueue.peek`), so that when a slot frees, the claim goes straight to the
start. Nothing is held for it: no claim, no lease, no ledger row, and a container that has not
started uses no memory, CPU or GPU. So only jobs without GPUs (the claim chooses the devices)
and without a workdir (unpacked once claimed) are prepared, and the container is started only
by the attempt that claimed its job, when it is exactly the container that attempt would create
(the same spec, bar the name). Anything else is removed off the slot's path. A prepared
container carries its attempt's labels, so reconcile removes one that a crash leaves behind.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace

from agent.config import Settings
from agent.core.prepare import PrepareOdds
from agent.core.reconcile import Key, container_key
from agent.core.records import Claim, Job
from agent.metrics import PREPARED_CONTAINERS
from agent.runtime.base import ContainerSpec, Runtime
from agent.worker.container_spec import container_spec, outputs_path
from agent.worker.execution import ensure_outputs_dir

log = logging.getLogger("trainyard.agent")


@dataclass
class _Prepared:
    key: Key
    spec: ContainerSpec
    done: threading.Event = field(default_factory=threading.Event)  # created, or failed to
    removed: threading.Event = field(default_factory=threading.Event)  # once discarded
    container_id: str | None = None  # once created; None after a failed create
    seq: int = 0  # the order it was prepared in
    passes: int = 0  # claims that took a job prepared after this one


class Preparer:
    """Up to `limit` prepared containers per agent (one per slot), plus those being removed.
    Thread-safe: the agent's loop offers chances (`prepare`) and reports its claims
    (`claimed`); an attempt's thread asks for its container (`take`); reconcile reads `keys()`.
    """

    def __init__(
        self,
        settings: Settings,
        runtime: Runtime,
        peek: Callable[[Collection[str]], Job | None],
        *,
        limit: int = 1,
        odds: PrepareOdds | None = None,
    ) -> None:
        self._settings = settings
        self._runtime = runtime
        self._peek = peek  # the queue's due head, bar these job ids
        self._limit = limit
        self._odds = odds or PrepareOdds()
        self._lock = threading.Lock()
        self._live: dict[Key, _Prepared] = {}  # being created or ready, not yet claimed
        self._claimed: dict[Key, _Prepared] = {}  # claimed, until the attempt takes it
        self._removing: dict[int, _Prepared] = {}  # by id(): one job may be there twice
        self._threads: set[threading.Thread] = set()
        self._preparing = False  # a thread is filling up to the limit
        self._claims = 0  # claims reported so far: a peek older than the last claim is stale
        self._prepared = 0  # containers prepared so far (their order)
        self._closed = False

    # --- the agent's loop ------------------------------------------------------------------

    def prepare(self) -> None:
        """A chance to prepare (every slot is busy): create the containers of the next jobs
        in the queue, up to the limit, unless misses have put preparing on hold for now."""
        with self._lock:
            if self._closed or self._preparing or len(self._live) >= self._limit:
                return
            if not self._odds.should_prepare():
                return
            self._preparing = True
            claims = self._claims
            self._start(lambda: self._fill(claims), "prepare-next")

    def claimed(self, key: Key | None) -> None:
        """This agent's claim took `key` (None: it found nothing). If that job was not
        prepared, the queue is not handing this agent the jobs it prepared (another agent
        took them, they were cancelled, or others jumped the queue): they all go. Jobs
        prepared before the claimed one may still come (a tie in queue order), but one passed
        over by more claims than there are slots will not."""
        with self._lock:
            self._claims += 1
            hit = self._live.pop(key, None) if key is not None else None
            if hit is not None:
                assert key is not None
                self._claimed[key] = hit  # until its attempt takes it
                passed = []
                for earlier in self._live.values():
                    if earlier.seq < hit.seq:
                        earlier.passes += 1
                        if earlier.passes > self._limit:
                            passed.append(earlier)
            else:
                passed = list(self._live.values())
            for stale in passed:  # each a container made for nothing: a miss
                self._odds.record(used=False)
                del self._live[stale.key]
                self._discard(stale)

    def keys(self) -> set[Key]:
        """Attempts with a prepared container here, or one being removed (reconcile leaves
        those alone)."""
        with self._lock:
            leaving = {prepared.key for prepared in self._removing.values()}
            return set(self._live) | set(self._claimed) | leaving

    def close(self, timeout: float = 30.0) -> None:
        """Prepare nothing more and remove what is prepared; returns once it is gone."""
        with self._lock:
            self._closed = True
            for prepared in [*self._live.values(), *self._claimed.values()]:
                self._discard(prepared)
            self._live.clear()
            self._claimed.clear()
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    # --- an attempt's thread ----------------------------------------------------------------

    def take(self, spec: ContainerSpec) -> str | None:
        """The prepared container of this attempt, if it is exactly `spec` (bar the name):
        then it is the attempt's to start. None: create one."""
        key = container_key(spec)
        with self._lock:
            live = None
            if key is not None:
                live = self._claimed.pop(key, None) or self._live.pop(key, None)
            # A discarded container of the same job may still be on its way out: wait, so
            # that a job never has two containers of one attempt, nor loses its outputs dir.
            leaving = [p for p in self._removing.values() if key and p.key[0] == key[0]]
        for prepared in leaving:
            prepared.removed.wait()
        if live is None:
            return None
        live.done.wait()
        used = live.container_id is not None and replace(spec, name=live.spec.name) == live.spec
        with self._lock:
            self._odds.record(used=used)
        if used:
            PREPARED_CONTAINERS.labels("used").inc()
            return live.container_id
        if live.container_id is not None:  # the job changed since it was prepared
            PREPARED_CONTAINERS.labels("discarded").inc()
            self._remove(live, remove_outputs=False)
        return None

    # --- the threads ------------------------------------------------------------------------

    def _start(self, target: Callable[[], None], name: str) -> None:
        """Run `target` in a thread that `close` waits for (called holding the lock)."""
        thread = threading.Thread(target=lambda: self._run(target), name=name, daemon=True)
        self._threads.add(thread)
        thread.start()

    def _run(self, target: Callable[[], None]) -> None:
        try:
            target()
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _fill(self, claims: int) -> None:
        """Prepare the next jobs in queue order until the limit, the first job that cannot
        be prepared, or a claim (which makes what was peeked stale)."""
        try:
            while self._prepare_one(claims):
                pass
        finally:
            with self._lock:
                self._preparing = False

    def _prepare_one(self, claims: int) -> bool:
        with self._lock:
            if self._closed or self._claims != claims or len(self._live) >= self._limit:
                return False
            exclude = {job_id for job_id, _ in [*self._live, *self._claimed]}
        prepared: _Prepared | None = None
        try:
            job = self._peek(exclude)
            spec = self._spec(job) if job is not None else None
            with self._lock:
                # A claim since the peek may have taken that very job (or the agent stops).
                if spec is not None and not self._closed and self._claims == claims:
                    key = container_key(spec)
                    assert key is not None
                    self._prepared += 1
                    prepared = self._live[key] = _Prepared(key, spec, seq=self._prepared)
            if prepared is None:
                return False
            ensure_outputs_dir(
                outputs_path(self._settings, prepared.key[0]), self._settings.container_user
            )
            prepared.container_id = self._runtime.create(prepared.spec)
            return True
        except Exception as exc:  # a chance missed, nothing more: the claim creates it
            log.info("could not prepare the next job's container: %s", exc)
            with self._lock:
                self._odds.record(used=False)
                if prepared is not None and self._live.get(prepared.key) is prepared:
                    del self._live[prepared.key]
            return False
        finally:
            if prepared is not None:
                prepared.done.set()

    def _spec(self, job: Job) -> ContainerSpec | None:
        if job.gpus or job.workdir is not None:
            return None
        number = job.attempt_count + 1
        claim = Claim(job, number, "", (), self._settings.agent_id)
        spec = container_spec(claim, self._settings)
        # Its own name: another agent on this engine may claim the job and create the usual one.
        return replace(spec, name=f"{spec.name}-p{uuid.uuid4().hex[:8]}")

    def _discard(self, prepared: _Prepared) -> None:
        """Remove a prepared container off the caller's path (called holding the lock)."""
        PREPARED_CONTAINERS.labels("discarded").inc()
        self._removing[id(prepared)] = prepared

        def remove() -> None:
            try:
                prepared.done.wait()
                self._remove(prepared, remove_outputs=True)
            finally:
                with self._lock:
                    self._removing.pop(id(prepared), None)
                prepared.removed.set()

        self._start(remove, "prepare-remove")

    def _remove(self, prepared: _Prepared, *, remove_outputs: bool) -> None:
        if prepared.container_id is not None:
            try:
                self._runtime.remove(prepared.container_id)
            except Exception as exc:  # reconcile removes it: it is nobody's attempt
                log.warning("could not remove prepared container %s: %s", prepared.spec.name, exc)
        if remove_outputs:
            # Made for a job that ran elsewhere (or not yet): leave no empty directory.
            with contextlib.suppress(OSError):
                outputs_path(self._settings, prepared.key[0]).rmdir()
