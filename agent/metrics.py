"""Every Prometheus metric Trainyard exports, in one place."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS_SUBMITTED = Counter(
    "trainyard_jobs_submitted_total", "Jobs accepted onto the queue.", registry=REGISTRY
)
JOBS_REJECTED = Counter(
    "trainyard_jobs_rejected_total", "Submissions refused.", ["reason"], registry=REGISTRY
)
ATTEMPTS_FINISHED = Counter(
    "trainyard_attempts_finished_total",
    "Container runs that ended, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
ATTEMPT_SECONDS = Histogram(
    "trainyard_attempt_duration_seconds",
    "Wall time of one container run.",
    buckets=(0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 48 * 3600),
    registry=REGISTRY,
)
START_LATENCY_SECONDS = Histogram(
    "trainyard_claim_to_start_seconds",
    "From claiming a job to its container running.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
    registry=REGISTRY,
)
RUNNING_ATTEMPTS = Gauge(
    "trainyard_running_attempts", "Attempts this process is running now.", registry=REGISTRY
)
QUEUE_DEPTH = Gauge(
    "trainyard_queue_depth", "Jobs waiting in the queue (sampled on scrape).", registry=REGISTRY
)
JOB_PROGRESS = Gauge(
    "trainyard_job_progress",
    "Training progress (0-1) of each job this agent runs, from the JSON lines it prints "
    "(epoch/epochs or step/total_steps); the label goes when the attempt ends.",
    ["job_id"],
    registry=REGISTRY,
)

LOG_FOLLOWERS = Gauge(
    "trainyard_log_followers",
    "Log readers following a job right now (bounded by TRAINYARD_MAX_FOLLOWERS).",
    registry=REGISTRY,
)
