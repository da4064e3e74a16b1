"""What container an attempt runs in: a pure function of the claim and the settings."""

from __future__ import annotations

import json
from pathlib import Path

from agent.config import Settings
from agent.core.jobs import RESERVED_ENV_PREFIXES
from agent.core.records import Claim
from agent.core.workdirs import WORKSPACE
from agent.runtime.base import AGENT_LABEL, ATTEMPT_LABEL, JOB_LABEL, ContainerSpec

OUTPUTS_MOUNT = "/outputs"


def outputs_path(settings: Settings, job_id: str) -> Path:
    """The job's own output directory on this host, the same for every attempt."""
    return (settings.outputs_dir / job_id).absolute()


NO_GPUS = "void"
"""NVIDIA_VISIBLE_DEVICES for a job without GPUs: the NVIDIA container toolkit then exposes no
GPU and no driver library ("none" would still mount the driver)."""
DRIVER_CAPABILITIES = "compute,utility"
"""NVIDIA_DRIVER_CAPABILITIES: CUDA and nvidia-smi, nothing more (no display or video)."""


def container_env(claim: Claim) -> dict[str, str]:
    """The job's env plus what the agent sets, which always wins: TRAINYARD_* and NVIDIA_*.

    The GPU devices are named here from the claim, so neither the job's env (refused at
    submit, but a job stored before that rule existed may carry it) nor the image's own ENV
    (CUDA images set NVIDIA_VISIBLE_DEVICES=all) can reach GPUs outside the ledger on a host
    whose default runtime is nvidia."""
    job, number = claim.job, claim.attempt
    env = {
        # Python's stdout is block-buffered when it is not a terminal: a script's print()s
        # would reach the log late and out of order with its stderr. The job may say otherwise.
        "PYTHONUNBUFFERED": "1",
        **{
            key: value
            for key, value in job.env.items()
            if not key.upper().startswith(RESERVED_ENV_PREFIXES)
        },
    }
    env.update(
        TRAINYARD_JOB_ID=job.id,
        TRAINYARD_ATTEMPT=str(number),
        TRAINYARD_RESUME="1" if number > 1 else "0",
        # How the previous attempt ended (empty on the first), so a script can adapt.
        TRAINYARD_LAST_OUTCOME=(job.outcome or "") if number > 1 else "",
        TRAINYARD_PARAMS=json.dumps(job.params),
        TRAINYARD_OUTPUT_DIR=OUTPUTS_MOUNT,
        NVIDIA_VISIBLE_DEVICES=",".join(claim.gpu_ids) or NO_GPUS,
        NVIDIA_DRIVER_CAPABILITIES=DRIVER_CAPABILITIES,
    )
    return env


def container_spec(
    claim: Claim, settings: Settings, *, workdir: Path | None = None
) -> ContainerSpec:
    """The container of this attempt; `workdir` is the unpacked tree of the job's workdir on
    this host, mounted read-only at /workspace and made the working directory."""
    job, number = claim.job, claim.attempt
    return ContainerSpec(
        name=f"trainyard-{job.id}-{number}",
        image=job.image,
        command=job.command,
        env=container_env(claim),
        labels={JOB_LABEL: job.id, ATTEMPT_LABEL: str(number), AGENT_LABEL: settings.agent_id},
        memory_bytes=job.memory_bytes,
        nano_cpus=int(job.cpus * 1e9),
        pids_limit=settings.pids_limit,
        user=settings.container_user,
        gpu_ids=claim.gpu_ids,
        mounts={str(outputs_path(settings, job.id)): OUTPUTS_MOUNT},
        read_only_mounts={str(workdir): WORKSPACE} if workdir is not None else {},
        working_dir=WORKSPACE if workdir is not None else None,
        read_only_rootfs=settings.read_only_rootfs,
        # With a read-only root, /tmp is memory (counted in the job's memory limit).
        tmpfs={"/tmp": f"rw,nosuid,nodev,size={job.memory_bytes}"}  # noqa: S108
        if settings.read_only_rootfs
        else {},
        engine_log_max_bytes=settings.engine_log_max_bytes,
        engine_log_max_files=settings.engine_log_max_files,
    )
