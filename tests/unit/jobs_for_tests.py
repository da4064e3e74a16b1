"""A resolved job for unit tests that submit straight to the queue."""

from __future__ import annotations

from typing import Any

from agent.core.records import NewJob


def new_job(**overrides: Any) -> NewJob:
    values: dict[str, Any] = {
        "name": "t",
        "image": "trainyard/train:latest",
        "command": None,
        "params": {},
        "env": {},
        "memory_bytes": 256 * 2**20,
        "cpus": 0.5,
        "gpus": 0,
        "timeout_seconds": None,
        "max_retries": 0,
        "priority": 0,
    }
    values.update(overrides)
    return NewJob(**values)
