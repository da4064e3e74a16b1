"""Follower abuse: hundreds of log follow streams opened and dropped, and slow readers, while
/health stays answering and the agent keeps claiming (a real server over real sockets)."""

from __future__ import annotations

import re
import signal
import socket
import struct
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Proc, agent_env, free_port, wait_for

pytestmark = pytest.mark.docker

LIMIT = 150


def _open_follow(port: int, job_id: str, *, sse: bool = False) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    accept = "Accept: text/event-stream\r\n" if sse else ""
    request = (
        f"GET /jobs/{job_id}/logs?follow=true&tail=5 HTTP/1.1\r\nHost: 127.0.0.1\r\n{accept}\r\n"
    )
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the follow stream"
        head += chunk
    status = int(head.split(b" ", 2)[1])
    assert status == 200, head[:300]
    return sock


def _drop(sock: socket.socket) -> None:
    """Vanish without a goodbye: an RST, as a killed client or a dead network does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _followers(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    match = re.search(r"^trainyard_log_followers (\S+)$", text, re.MULTILINE)
    assert match, "the followers gauge is exported"
    return float(match.group(1))


def test_dropped_and_slow_followers_never_take_the_service_down(
    tmp_path: Path, procs: list[Proc]
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = agent_env(
        tmp_path,
        f"test-followers-{port}",
        TRAINYARD_PORT=str(port),
        TRAINYARD_MAX_FOLLOWERS=str(LIMIT),
        TRAINYARD_POLL_INTERVAL="0.2",
    )
    procs.append(Proc([], env, tmp_path / "server.log"))
    wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, "the service")
    quiet = httpx.post(
        f"{base}/jobs", json={"command": ["sh", "-c", "echo started; sleep 300"]}
    ).json()
    wait_for(
        lambda: "stdout started" in httpx.get(f"{base}/jobs/{quiet['id']}/logs").text,
        "the quiet job to start",
    )

    # Far more followers than the server has worker threads (40): each holds no thread.
    dropped = [_open_follow(port, quiet["id"], sse=i % 2 == 0) for i in range(120)]
    slow = [_open_follow(port, quiet["id"]) for _ in range(20)]  # open, never read
    assert _followers(base) == 140
    for sock in dropped:
        _drop(sock)
    wait_for(lambda: _followers(base) == 20, "the dropped followers to be released")

    # The service answers and the agent keeps claiming meanwhile.
    for _ in range(20):
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200
    quick = httpx.post(f"{base}/jobs", json={"command": ["echo", "hello"]}).json()
    done = wait_for(
        lambda: (
            (j := httpx.get(f"{base}/jobs/{quick['id']}").json())["status"] == "succeeded" and j
        ),
        "a new job to run while followers are open",
    )
    assert done["exit_code"] == 0

    # Past the bound: a clear 503, and the bound is restored once readers leave.
    extra = [_open_follow(port, quiet["id"]) for _ in range(LIMIT - 20)]
    refused = httpx.get(f"{base}/jobs/{quiet['id']}/logs", params={"follow": "true"}, timeout=5)
    assert refused.status_code == 503
    assert f"at most {LIMIT}" in refused.json()["detail"]
    for sock in extra + slow:
        _drop(sock)
    wait_for(lambda: _followers(base) == 0, "every follower to be released")

    # A follower that stays ends with the job.
    last = _open_follow(port, quiet["id"])
    assert httpx.post(f"{base}/jobs/{quiet['id']}/cancel").status_code == 200
    last.settimeout(60)
    tail = b""
    while chunk := last.recv(65536):
        tail += chunk
    assert b"removed" in tail
    last.close()
    assert procs[0].stop(signal.SIGTERM) in (0, -signal.SIGTERM)
