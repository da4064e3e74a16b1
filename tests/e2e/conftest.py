"""Helpers for tests that run Trainyard as real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = log.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), *args],
            env={**os.environ, **env},
            cwd=log.parent,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        code = self.popen.wait(timeout)
        self.handle.close()
        return code


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        if proc.popen.poll() is None:
            proc.stop(signal.SIGKILL)


def agent_env(tmp_path: Path, agent_id: str, **extra: str) -> dict[str, str]:
    return {
        "TRAINYARD_DATA_DIR": str(tmp_path / "data"),
        "TRAINYARD_LOG_DIR": str(tmp_path / "logs"),
        "TRAINYARD_AGENT_ID": agent_id,
        "TRAINYARD_STOP_GRACE_SECONDS": "2",
        "TRAINYARD_DEFAULT_MEMORY": "256m",
        "TRAINYARD_DEFAULT_CPUS": "0.5",
        "TRAINYARD_GPUS": "none",
        **extra,
    }
