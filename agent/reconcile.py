"""Make the engine and the database agree after an agent (re)starts.

Nothing runs in this process yet when this is called, so every container labelled with this
agent is left over from an earlier run, and every attempt the database says this agent holds was
interrupted. Containers are removed and the attempts recorded as `infra_error`, which retries
them without spending the job's own `max_retries`.
"""

from __future__ import annotations

import logging

from agent.config import Settings
from agent.db.queue import JobQueue
from agent.errors import StaleState, TrainyardError
from agent.jobs import Outcome
from agent.logs import JobLogWriter, job_log_path
from agent.records import ActiveAttempt, AttemptResult, Claim
from agent.retry import RetryPolicy
from agent.runtime.docker_runner import AGENT_LABEL, ATTEMPT_LABEL, JOB_LABEL, DockerRunner

log = logging.getLogger("trainyard.agent")


def reconcile(
    settings: Settings, queue: JobQueue, runtime: DockerRunner, policy: RetryPolicy
) -> None:
    agent_id = settings.agent_id
    containers = runtime.find(**{AGENT_LABEL: agent_id})
    by_attempt = {
        (state.labels.get(JOB_LABEL), state.labels.get(ATTEMPT_LABEL)): state
        for state in containers
    }
    for state in containers:
        runtime.remove(state.id)
        log.info(
            "reconcile: removed container %s of job %s attempt %s",
            state.id[:12],
            state.labels.get(JOB_LABEL),
            state.labels.get(ATTEMPT_LABEL),
        )
    for active in queue.active_attempts(agent_id):
        had_container = (active.job_id, str(active.attempt)) in by_attempt
        reason = (
            "the agent restarted while the attempt ran; its container was removed"
            if had_container
            else "the agent restarted and the attempt's container was gone"
        )
        _requeue(settings, queue, policy, active, reason)


def _requeue(
    settings: Settings, queue: JobQueue, policy: RetryPolicy, active: ActiveAttempt, reason: str
) -> None:
    job = queue.get(active.job_id)
    claim = Claim(job=job, attempt=active.attempt, lease_token=active.lease_token, gpu_ids=())
    decision = policy.decide(
        Outcome.INFRA_ERROR,
        exit_code=None,
        retries_used=job.retries_used,
        max_retries=job.max_retries,
        infra_retries_used=job.infra_retries_used,
    )
    try:
        status = queue.finish(
            claim, active.status, AttemptResult(Outcome.INFRA_ERROR.value, reason), decision
        )
    except (StaleState, TrainyardError) as exc:
        log.warning("reconcile: job %s attempt %d: %s", job.id, active.attempt, exc)
        return
    with JobLogWriter(
        job_log_path(settings.log_dir, job.id),
        max_bytes=settings.log_max_bytes,
        backup_count=settings.log_backup_count,
    ) as writer:
        writer.agent(f"infra_error: {reason}; job {status.value}", attempt=active.attempt)
    log.info("reconcile: job %s attempt %d: %s; job %s", job.id, active.attempt, reason, status)
