"""What container an attempt runs in: a pure function of the claim and the settings."""

from __future__ import annotations

import json
from pathlib import Path

from agent.config import Settings
from agent.core.records import Claim
from agent.runtime.base import AGENT_LABEL, ATTEMPT_LABEL, JOB_LABEL, ContainerSpec

OUTPUTS_MOUNT = "/outputs"


def outputs_path(settings: Settings, job_id: str) -> Path:
    """The job's own output directory on this host, the same for every attempt."""
    return (settings.outputs_dir / job_id).absolute()


def container_spec(claim: Claim, settings: Settings) -> ContainerSpec:
    job, number = claim.job, claim.attempt
    env = dict(job.env)
    env.update(
        TRAINYARD_JOB_ID=job.id,
        TRAINYARD_ATTEMPT=str(number),
        TRAINYARD_RESUME="1" if number > 1 else "0",
        TRAINYARD_PARAMS=json.dumps(job.params),
        TRAINYARD_OUTPUT_DIR=OUTPUTS_MOUNT,
    )
    return ContainerSpec(
        name=f"trainyard-{job.id}-{number}",
        image=job.image,
        command=job.command,
        env=env,
        labels={JOB_LABEL: job.id, ATTEMPT_LABEL: str(number), AGENT_LABEL: settings.agent_id},
        memory_bytes=job.memory_bytes,
        nano_cpus=int(job.cpus * 1e9),
        pids_limit=settings.pids_limit,
        user=settings.container_user,
        gpu_ids=claim.gpu_ids,
        mounts={str(outputs_path(settings, job.id)): OUTPUTS_MOUNT},
        engine_log_max_bytes=settings.engine_log_max_bytes,
        engine_log_max_files=settings.engine_log_max_files,
    )
