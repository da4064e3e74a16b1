"""Helpers for tests that run Trainyard as real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], what: str = "condition", timeout: float = 60) -> Any:
    """Poll `predicate` (an HTTP call that may not connect yet) until it returns something true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.TransportError:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
