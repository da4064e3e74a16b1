"""Every Prometheus metric a Trainyard process counts itself, in one place.

These are process-local: each API or agent process counts what it did, and Prometheus sums
over the processes it scrapes (`sum(rate(…))`). What the database knows (jobs by status,
finished jobs by outcome, each agent's capacity, holdings and heartbeat) is read at scrape time
by agent/metrics_collector.py instead, so every process reports the same, right values; the
GPU series (NVML) are there only where NVML answers. The README lists them all.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

# Seconds: from well under a second (an in-process claim, an engine start) to days (training).
WAIT_BUCKETS = (0.01, 0.05, 0.25, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)

# --- the API's side ----------------------------------------------------------------------------

JOBS_SUBMITTED = Counter(
    "trainyard_jobs_submitted",
    "Jobs this process accepted onto the queue (process-local: sum over the API processes).",
    registry=REGISTRY,
)
JOBS_REJECTED = Counter(
    "trainyard_jobs_rejected",
    "Submissions this process refused, by the error's class (process-local).",
    ["reason"],
    registry=REGISTRY,
)
LOG_FOLLOWERS = Gauge(
    "trainyard_log_followers",
    "Log readers following a job right now (bounded by TRAINYARD_MAX_FOLLOWERS).",
    registry=REGISTRY,
)

# --- the agent's side --------------------------------------------------------------------------

QUEUE_WAIT_SECONDS = Histogram(
    "trainyard_queue_wait_seconds",
    "From when an attempt could run (a job's submit, a retry's backoff end) to its claim, "
    "observed by the agent that claimed it (process-local).",
    buckets=WAIT_BUCKETS,
    registry=REGISTRY,
)
START_LATENCY_SECONDS = Histogram(
    "trainyard_claim_to_start_seconds",
    "From claiming a job to its container running: the engine's create and start (process-local).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
    registry=REGISTRY,
)
ATTEMPT_SECONDS = Histogram(
    "trainyard_attempt_duration_seconds",
    "Run time: wall time of one container run, from its creation to its result (process-local).",
    buckets=(0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 48 * 3600),
    registry=REGISTRY,
)
ATTEMPTS_FINISHED = Counter(
    "trainyard_attempts_finished",
    "Container runs this agent ran to a stored result, by outcome (process-local).",
    ["outcome"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "trainyard_retries",
    "Retries this agent scheduled, by the failure class (outcome) of the attempt that failed "
    "(process-local).",
    ["outcome"],
    registry=REGISTRY,
)
RUNNING_ATTEMPTS = Gauge(
    "trainyard_running_attempts", "Attempts this process is running now.", registry=REGISTRY
)
JOB_PROGRESS = Gauge(
    "trainyard_job_progress",
    "Training progress (0-1) of each job this agent runs, from the JSON lines it prints "
    "(epoch/epochs or step/total_steps); the label goes when the attempt ends.",
    ["job_id"],
    registry=REGISTRY,
)
LOG_BYTES_WRITTEN = Counter(
    "trainyard_log_bytes_written",
    "Bytes this process wrote to job logs: container output and the agent's own lines "
    "(process-local).",
    registry=REGISTRY,
)
HEARTBEATS = Counter(
    "trainyard_agent_heartbeats",
    "Heartbeats this agent process wrote to the database (process-local; the last one of "
    "every agent is trainyard_agent_last_heartbeat_timestamp_seconds).",
    registry=REGISTRY,
)
PREPARED_CONTAINERS = Counter(
    "trainyard_prepared_containers",
    "Containers this agent created ahead for the job its next claim was likely to take, while "
    "every slot was busy: used (the claim took that job and started it) or discarded "
    "(process-local).",
    ["result"],
    registry=REGISTRY,
)
