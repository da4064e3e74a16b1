"""What users can ask of Trainyard: submit, cancel, get, list, stats, events, logs, health."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from agent.config import LOOPBACK_HOSTS, Settings
from agent.core.admission import image_refusal, live_agents, resolve, unschedulable_reason
from agent.core.auth import (
    HIDDEN_JOB,
    LOCAL_USER,
    NOT_A_VALID_TOKEN,
    SEND_AUTHORIZATION,
    InvalidToken,
    Quota,
    UnsafeBind,
    User,
    bind_refusal,
    hash_token,
    owner_scope,
    redact_env,
)
from agent.core.errors import (
    InvalidJobSpec,
    InvalidRequest,
    PayloadTooLarge,
    RuntimeUnavailable,
    TrainyardError,
)
from agent.core.jobs import JobSpec, JobStatus, check_deletable
from agent.core.records import AgentInfo, Event, Job, NewJob, Stats
from agent.core.training import SeriesPage, TrainingSummary
from agent.core.workdirs import UNPACKED_FACTOR, check_digest, check_workdir
from agent.db.engine import Database
from agent.db.gauges import GaugeReader
from agent.db.jobstore import Submit
from agent.db.metrics import MetricStore
from agent.db.queue import JobQueue
from agent.db.tokens import TokenStore
from agent.db.workdirs import WorkdirStore
from agent.jobfiles import LocalJobFiles, OutputListing
from agent.joblog import LogFollower, parse_position
from agent.metrics import JOBS_REJECTED, JOBS_SUBMITTED, LOG_FOLLOWERS
from agent.metrics_collector import database_registry, exposition
from agent.remote import AgentClient, AgentUnreachable

FOLLOW_STATUS_CHECK_SECONDS = 1.0
KNOWN_TOKENS_MAX = 1024


@contextmanager
def _counted_refusals() -> Iterator[None]:
    """Count what the block raises in trainyard_jobs_rejected, by class. A refused token is
    not a refused job: the route's own 401, which counts nothing, follows it."""
    try:
        yield
    except InvalidToken:
        raise
    except Exception as exc:
        JOBS_REJECTED.labels(type(exc).__name__).inc()
        raise


class AgentHandle(Protocol):
    """What the service needs of an agent in its own process (the worker's Agent is one):
    a wake-up on submit, a fast cancel, and what it runs. Other agents are reached through
    the database (LISTEN/NOTIFY and polls)."""

    def wake(self) -> None: ...

    def cancel(self, job_id: str, actor: str) -> bool: ...

    def running_job_ids(self) -> list[str]: ...

    def health(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Health:
    ok: bool
    checks: dict[str, dict[str, Any]]


class TrainyardService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        queue: JobQueue,
        *,
        engine_ping: Callable[[], str] | None = None,
        agent: AgentHandle | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.queue = queue
        self.engine_ping = engine_ping
        self.agent = agent
        self.files = LocalJobFiles(settings)
        self._followers = threading.BoundedSemaphore(settings.max_followers)
        self._clients: dict[str, AgentClient] = {}
        self.tokens = TokenStore(db)
        self._tokens_exist = False
        self._known_tokens: dict[str, User] = {}  # a token's SHA-256 -> its user, when last seen

    # --- who is asking ---------------------------------------------------------------------
    #
    # Every method a user calls takes `user`: they see, follow and cancel their own jobs only
    # (another user's is "not found", like an unknown id); an admin sees every job. None is an
    # internal caller (the agent's endpoint, which the API reaches with the agent secret, and
    # benchmarks). Jobs come back with their env values redacted: they are secrets.

    def authenticate(self, token: str | None) -> User:
        """The user a request acts as: its token's; or, while no token exists at all
        (single-user mode, loopback only), the local admin. InvalidToken (401) otherwise."""
        if token is None:
            if not self.tokens_exist():
                return LOCAL_USER
            raise InvalidToken(SEND_AUTHORIZATION)
        user = self.tokens.user(token)
        if user is None:
            raise InvalidToken(NOT_A_VALID_TOKEN)
        if len(self._known_tokens) >= KNOWN_TOKENS_MAX:
            self._known_tokens.clear()  # a bound, not an LRU: most APIs see a few tokens
        self._known_tokens[hash_token(token)] = user
        return user

    def known_user(self, token: str | None) -> User | None:
        """Who `token` was when this process last asked the database (or, without a token,
        the local user while this process knows of no token): a submit may act as that user
        if its own transaction verifies it (`submit_or_get(..., unverified=True)`). None: ask
        `authenticate`."""
        if token is None:
            return None if self._tokens_exist else LOCAL_USER
        return self._known_tokens.get(hash_token(token))

    def _verify(self, user: User) -> None:
        """InvalidToken unless what made `user` still holds: its token is active, or (the
        local user) no token exists at all."""
        if user.token_id is None:
            if self.tokens_exist():
                raise InvalidToken(SEND_AUTHORIZATION)
        elif not self.tokens.active(user.token_id):
            raise InvalidToken(NOT_A_VALID_TOKEN)

    def _forget(self, user: User) -> None:
        """`user`'s credentials no longer hold: no submit acts on what was known of them."""
        if user.token_id is None:
            self._tokens_exist = True
        else:
            self._known_tokens = {
                digest: known
                for digest, known in list(self._known_tokens.items())  # one step under the GIL
                if known.token_id != user.token_id
            }

    @property
    def tokens_known_to_exist(self) -> bool:
        """True once a token has been seen: then no request needs the database to learn it."""
        return self._tokens_exist

    def tokens_exist(self) -> bool:
        """Whether requests need a token. Tokens are never deleted (revoking keeps the row),
        so once true this stays true and is not asked again."""
        if not self._tokens_exist:
            self._tokens_exist = self.tokens.any()
        return self._tokens_exist

    def check_bind(self, host: str | None = None) -> None:
        """Refuse (UnsafeBind) to serve on `host` (default: TRAINYARD_HOST) beyond loopback
        while no token exists."""
        host = self.settings.host if host is None else host
        refusal = bind_refusal(host, LOOPBACK_HOSTS, tokens_exist=self.tokens_exist())
        if refusal is not None:
            raise UnsafeBind(refusal)

    def check_visible(self, job_id: str, *, user: User | None) -> None:
        """JobNotFound (404) unless `user` may see this job."""
        if owner_scope(user) is not None:
            self.queue.get(job_id, owner=owner_scope(user))

    def _quota(self) -> Quota:
        return Quota(self.settings.quota_queued, self.settings.quota_gpus)

    # --- jobs ------------------------------------------------------------------------------

    def submit(
        self,
        spec: JobSpec,
        *,
        actor: str | None = None,
        user: User | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        job, _created = self.submit_or_get(
            spec, actor=actor, user=user, idempotency_key=idempotency_key
        )
        return job

    def submit_or_get(
        self,
        spec: JobSpec,
        *,
        actor: str | None = None,
        user: User | None = None,
        idempotency_key: str | None = None,
        unverified: bool = False,
    ) -> tuple[Job, bool]:
        """Queue a job owned by `user`, within their quota: (the job, True). The same
        `idempotency_key` from the same user again: (the first job, False), never a second.

        `unverified`: `user` is what `known_user` said, not checked against the database for
        this request. The submit's own transaction checks it (its token is still active; or,
        for the local user, no token exists), once per group-committed batch: a read per
        request was a fifth of a submit's CPU. Credentials that no longer hold raise
        InvalidToken (401) before any other refusal could say anything."""
        if unverified and (user is None or idempotency_key is not None):
            if user is not None:  # a replay answers from the database: check first
                self._checked(user)
            unverified = False
        try:
            owner = user.name if user is not None else None
            actor = actor or (user.actor if user is not None else "api")
            if idempotency_key is not None:
                first = self.queue.find_keyed(owner, idempotency_key)
                if first is not None:
                    return self._shown(first), False
            return self._admit(
                resolve(spec, self.settings),
                owner=owner,
                actor=actor,
                idempotency_key=idempotency_key,
                verify=user if unverified else None,
            )
        except InvalidToken:
            if unverified and user is not None:
                self._forget(user)
            raise
        except TrainyardError:
            if unverified and user is not None:
                self._checked(user)
            raise

    def _checked(self, user: User) -> None:
        try:
            self._verify(user)
        except InvalidToken:
            self._forget(user)
            raise

    def _admit(
        self,
        new: NewJob,
        *,
        owner: str | None,
        actor: str,
        idempotency_key: str | None = None,
        verify: User | None = None,
    ) -> tuple[Job, bool]:
        """Queue `new` if every rule allows: images, workdir, schedulability, bound, quota."""
        with _counted_refusals():
            submit = self._submission(new, owner, actor, idempotency_key, verify)
            if new.workdir is not None and not self._workdirs.exists(new.workdir):
                raise InvalidJobSpec(
                    f"workdir {new.workdir} was never uploaded: PUT /workdirs/{new.workdir} "
                    "first (the CLI's --workdir does)"
                )
            job, created = self.queue.enqueue(submit)
        return self._admitted(job, created)

    async def submit_async(self, spec: JobSpec, *, user: User) -> tuple[Job, bool]:
        """`submit_or_get(spec, user=user, unverified=True)` from an event loop, for a submit
        that reads nothing before the queue's transaction (no idempotency key, no workdir): it
        waits for its group commit without a worker thread of its own."""
        try:
            new = resolve(spec, self.settings)
            if new.workdir is not None:
                raise ValueError("submit_async takes no workdir: it is read from the database")
            with _counted_refusals():
                submit = self._submission(new, user.name, user.actor, None, verify=user)
                job, created = await self.queue.enqueue_async(submit)
            return self._admitted(job, created)
        except InvalidToken:
            self._forget(user)
            raise
        except TrainyardError:
            await asyncio.to_thread(self._checked, user)
            raise

    def _submission(
        self,
        new: NewJob,
        owner: str | None,
        actor: str,
        idempotency_key: str | None,
        verify: User | None,
    ) -> Submit:
        """The queue's submit of `new`, if the image is allowed. The queue refuses a job that
        no live agent could ever run and checks `verify`'s credentials: it reads the agents and
        the tokens once per group-committed batch, not once per submit."""
        refusal = image_refusal(new.image, self.settings.allowed_image_patterns)
        if refusal is not None:
            raise InvalidJobSpec(refusal)
        return Submit(
            new,
            max_queued=self.settings.max_queued,
            actor=actor,
            owner=owner,
            idempotency_key=idempotency_key,
            quota=self._quota() if owner is not None else None,
            heartbeat_seconds=self.settings.heartbeat_seconds,
            single_user=verify is not None and verify.token_id is None,
            token_id=verify.token_id if verify is not None else None,
        )

    def _admitted(self, job: Job, created: bool) -> tuple[Job, bool]:
        if created:
            JOBS_SUBMITTED.inc()
            if self.agent is not None:
                self.agent.wake()
        return self._shown(job), created

    def rerun(self, job_id: str, *, user: User | None = None) -> Job:
        """A new job with the stored spec of `job_id` (its env too), owned by the same user."""
        first = self.queue.get(job_id, owner=owner_scope(user))
        new = NewJob(**{f.name: getattr(first, f.name) for f in fields(NewJob)})
        actor = user.actor if user is not None else "api"
        job, _created = self._admit(new, owner=self.queue.owner_of(job_id), actor=actor)
        return job

    def delete(self, job_id: str, *, user: User | None = None) -> None:
        """Remove a finished job with its log and outputs (on whichever host has them)."""
        job = self.queue.get(job_id, owner=owner_scope(user))
        check_deletable(job_id, job.status)  # before any file goes
        holder = self._holder(job)
        if holder is not None:
            holder.delete(job_id)
        self.files.delete(job_id)
        self.queue.delete(job_id, owner=owner_scope(user))

    # --- workdirs --------------------------------------------------------------------------

    @cached_property
    def _workdirs(self) -> WorkdirStore:
        return WorkdirStore(self.db)

    def workdir_exists(self, digest: str) -> bool:
        return self._workdirs.exists(check_digest(digest))

    def put_workdir(self, digest: str, data: bytes, *, user: User | None = None) -> bool:
        """Store an uploaded workdir after checking it; True when it is new."""
        limit = self.settings.workdir_max_bytes
        if len(data) > limit:
            raise PayloadTooLarge(
                f"the workdir is {len(data)} bytes compressed; at most {limit} "
                "(TRAINYARD_WORKDIR_MAX_BYTES): leave data and checkpoints out of it"
            )
        check_workdir(digest, data, max_unpacked_bytes=limit * UNPACKED_FACTOR)
        return self._workdirs.put(digest, data, owner=user.name if user is not None else None)

    def live_agents(self) -> list[AgentInfo]:
        """Live agents and what each offers (not what each holds: that is not needed to know
        what could ever run, and skipping it keeps a submit's read to one small query)."""
        return live_agents(
            self.queue.agent_offers(),
            now=datetime.now(UTC),
            heartbeat_seconds=self.settings.heartbeat_seconds,
        )

    def unschedulable_reasons(self, jobs: list[Job]) -> dict[str, str]:
        """Why each queued job cannot run on any live agent (only those that cannot)."""
        queued = [j for j in jobs if j.status is JobStatus.QUEUED]
        if not queued:
            return {}
        agents = self.live_agents()
        reasons = {}
        for job in queued:
            reason = unschedulable_reason(job.memory_bytes, job.cpus, job.gpus, agents)
            if reason is not None:
                reasons[job.id] = reason
        return reasons

    def cancel(self, job_id: str, *, actor: str | None = None, user: User | None = None) -> Job:
        actor = actor or (user.actor if user is not None else "api")
        job = self.queue.request_cancel(job_id, actor, owner=owner_scope(user))
        if self.agent is not None and job.status.is_active:
            self.agent.cancel(job_id, actor)
        return self._shown(job)

    def get(self, job_id: str, *, user: User | None = None) -> Job:
        return self._shown(self.queue.get(job_id, owner=owner_scope(user)))

    def agents(self, *, user: User | None = None) -> list[AgentInfo]:
        """Every agent; to a non-admin, the ids of other users' jobs holding GPUs are hidden."""
        agents = self.queue.agents()
        scope = owner_scope(user)
        if scope is None:
            return agents
        mine = self.queue.owned({j for a in agents for j in a.gpu_holders.values()}, scope)
        return [
            replace(
                a,
                gpu_holders={g: j if j in mine else HIDDEN_JOB for g, j in a.gpu_holders.items()},
            )
            for a in agents
        ]

    def list_jobs(
        self,
        *,
        status: JobStatus | None,
        limit: int,
        offset: int,
        user: User | None = None,
        labels: dict[str, str] | None = None,
        name_prefix: str | None = None,
    ) -> tuple[list[Job], int]:
        jobs, total = self.queue.list_jobs(
            status=status,
            limit=limit,
            offset=offset,
            owner=owner_scope(user),
            labels=labels,
            name_prefix=name_prefix,
        )
        return [self._shown(job) for job in jobs], total

    def events(self, job_id: str, *, user: User | None = None) -> list[Event]:
        return self.queue.events(job_id, owner=owner_scope(user))

    @staticmethod
    def _shown(job: Job) -> Job:
        """The job as users see it: env keys, no values."""
        return replace(job, env=redact_env(job.env))

    def stats(self) -> Stats:
        return self.queue.stats()

    @cached_property
    def _gauges(self) -> CollectorRegistry:
        return database_registry(
            GaugeReader(self.db).read, heartbeat_seconds=self.settings.heartbeat_seconds
        )

    def metrics_exposition(self) -> bytes:
        """Prometheus text: this process's own metrics, then the database's, read now."""
        return exposition(self._gauges)

    # --- training metrics ------------------------------------------------------------------

    @cached_property
    def _metric_store(self) -> MetricStore:
        return MetricStore(self.db)

    def training(self, job_ids: Iterable[str]) -> dict[str, TrainingSummary]:
        """The last metric values and progress of these jobs (of those that printed any),
        in one query: cheap enough for a page of jobs."""
        return self._metric_store.summaries(job_ids)

    def metric_series(
        self, job_id: str, *, keys: list[str] | None, since: int | None, limit: int
    ) -> SeriesPage:
        """A job's metric series after the cursor `since` (all of them when None)."""
        self.queue.get(job_id)  # 404 for unknown ids
        return self._metric_store.series(job_id, keys=keys, since=since, limit=limit)

    # --- logs ------------------------------------------------------------------------------

    def log_tail(self, job_id: str, lines: int, *, user: User | None = None) -> list[str]:
        holder = self._holder(self.queue.get(job_id, owner=owner_scope(user)))  # 404: unknown
        if holder is not None:
            return holder.tail(job_id, lines)
        return self.files.tail(job_id, lines)

    def log_follow(
        self, job_id: str, *, from_lines: int, user: User | None = None
    ) -> Iterator[str]:
        """Lines as they are written; ends once the job is final and its log drained."""
        for position, line in self.log_follow_positioned(job_id, from_lines=from_lines, user=user):
            if position and position != "gap":
                yield line

    def log_follow_positioned(
        self,
        job_id: str,
        *,
        from_lines: int,
        after: str | None = None,
        heartbeat: float | None = None,
        user: User | None = None,
    ) -> Iterator[tuple[str, str]]:
        """(position, line) as lines are written (see joblog.follow_positioned), from just
        after the position `after` if given; ends once the job is final and its log drained."""
        position = _log_position(after)
        holder = self._holder(self.queue.get(job_id, owner=owner_scope(user)))
        if holder is not None:
            return holder.follow(job_id, from_lines=from_lines, after=after)
        last_check = 0.0
        finished = False

        def stop() -> bool:
            nonlocal last_check, finished
            now = time.monotonic()
            if not finished and now - last_check >= FOLLOW_STATUS_CHECK_SECONDS:
                last_check = now
                finished = self._log_finished(job_id)
            return finished

        return self.files.follow(
            job_id, from_lines=from_lines, after=position, stop=stop, heartbeat=heartbeat
        )

    def log_poller(
        self,
        job_id: str,
        *,
        from_lines: int,
        after: str | None = None,
        user: User | None = None,
    ) -> LogPoller | None:
        """A non-blocking follower of a local log (None when another host has it: use
        log_follow_positioned). At most TRAINYARD_MAX_FOLLOWERS at once: 503 past that."""
        position = _log_position(after)
        job = self.queue.get(job_id, owner=owner_scope(user))
        if self._holder(job) is not None:
            return None
        if not self._followers.acquire(blocking=False):
            raise TooManyFollowers(
                f"too many log followers: at most {self.settings.max_followers} at once "
                "(TRAINYARD_MAX_FOLLOWERS); read with tail or try again later"
            )
        LOG_FOLLOWERS.inc()
        try:
            follower = self.files.follower(job_id, from_lines=from_lines, after=position)
        except BaseException:
            self._release_follower()
            raise
        return LogPoller(self, job_id, follower)

    def _release_follower(self) -> None:
        LOG_FOLLOWERS.dec()
        self._followers.release()

    def _log_finished(self, job_id: str) -> bool:
        """Final, and no agent here writes its log any more (the last line is on removal)."""
        job = self.queue.get(job_id)
        return job.status.is_final and job_id not in self._running_here()

    def _running_here(self) -> list[str]:
        return self.agent.running_job_ids() if self.agent is not None else []

    # --- outputs ---------------------------------------------------------------------------

    def outputs(self, job_id: str, *, user: User | None = None) -> OutputListing:
        holder = self._holder(self.queue.get(job_id, owner=owner_scope(user)), kind="outputs")
        if holder is not None:
            return holder.outputs(job_id)
        if not self.files.has_outputs(job_id):
            return OutputListing([], truncated=False)
        return self.files.outputs(job_id)

    def output(self, job_id: str, path: str, *, user: User | None = None) -> Path | AgentClient:
        """The local file, or the client of the agent that has it (see AgentClient.download)."""
        holder = self._holder(self.queue.get(job_id, owner=owner_scope(user)), kind="outputs")
        if holder is not None:
            return holder
        return self.files.output_path(job_id, path)

    def _holder(self, job: Job, *, kind: str = "log") -> AgentClient | None:
        """The client of the agent whose host has this job's files; None when they are here
        (the embedded agent ran it, or the directory is shared storage)."""
        agent_id = job.attempts[-1].agent_id if job.attempts else None
        here = self.files.has_log(job.id) if kind == "log" else self.files.has_outputs(job.id)
        if (
            agent_id is None
            or here
            or (self.agent is not None and agent_id == self.settings.agent_id)
        ):
            return None
        secret = self.settings.agent_secret
        endpoint = self.queue.agent_endpoint(agent_id)
        if endpoint is None or secret is None:
            raise AgentUnreachable(
                f"this job ran on agent {agent_id}, whose files are on its own host; that agent "
                "serves them only with TRAINYARD_AGENT_LISTEN and the same TRAINYARD_AGENT_SECRET "
                "as this API (or share TRAINYARD_LOG_DIR and TRAINYARD_DATA_DIR between hosts)"
            )
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = AgentClient(
                endpoint, secret.get_secret_value(), agent_id=agent_id
            )
        return client

    # --- health ----------------------------------------------------------------------------

    def health(self) -> Health:
        checks: dict[str, dict[str, Any]] = {}
        try:
            self.db.ping()
            checks["database"] = {"ok": True, "dialect": self.db.dialect}
        except Exception as exc:
            checks["database"] = {"ok": False, "error": f"database unreachable: {exc}"}
        if self.engine_ping is not None:
            try:
                checks["docker"] = {"ok": True, "version": self.engine_ping()}
            except RuntimeUnavailable as exc:
                checks["docker"] = {"ok": False, "error": str(exc)}
        if self.agent is not None:
            checks["agent"] = self.agent.health()
        elif checks["database"]["ok"]:
            # An API-only process: agents (and their engines) are elsewhere; say how many live.
            live = self.live_agents()
            checks["agents"] = {"ok": True, "live": len(live), "ids": [a.id for a in live]}
        return Health(ok=all(check["ok"] for check in checks.values()), checks=checks)


def _log_position(after: str | None) -> tuple[str, int] | None:
    """A reader's Last-Event-ID as a log position (None: from the tail)."""
    if not after:
        return None
    position = parse_position(after)
    if position is None:
        raise InvalidRequest(
            "Last-Event-ID is not a log position of this service; reconnect without it"
        )
    return position


class TooManyFollowers(TrainyardError):
    """Too many log followers at once; try again later."""

    status_code = 503


class LogPoller:
    """One reader following one job's local log, without holding a thread between polls."""

    def __init__(self, service: TrainyardService, job_id: str, follower: LogFollower) -> None:
        self._service = service
        self._job_id = job_id
        self._follower = follower
        self._finished = False
        self._checked = 0.0
        self._closed = False

    def poll(self) -> tuple[list[tuple[str, str]], bool]:
        """New (position, line) items, and whether the log is complete (then stop)."""
        now = time.monotonic()
        finished = False
        if now - self._checked >= FOLLOW_STATUS_CHECK_SECONDS:
            self._checked = now
            finished = self._service._log_finished(self._job_id)
        items = self._follower.poll()  # after the check: nothing written before it is missed
        return items, finished

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._follower.close()
            self._service._release_follower()
