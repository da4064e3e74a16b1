"""Hostile requests against the real API and databases: refused up front, nothing stored, and
every later page still served (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn

from agent.config import Settings
from api.app import create_app
from tests.conftest import Harness

KiB, MiB = 1024, 1024 * 1024


@pytest.fixture
def api_only(
    start_harness: Callable[..., Harness],
    make_settings: Callable[..., Settings],
    database_url: str,
) -> Harness:
    """The API without an agent: jobs stay queued."""
    return start_harness(make_settings(database_url=database_url), with_agent=False)


def post_raw(h: Harness, body: str, path: str = "/jobs") -> Any:
    """POST a JSON text as is: escapes like \\ud800 or \\u0000 reach the server as sent."""
    return h.client.post(path, content=body.encode(), headers={"content-type": "application/json"})


def total(h: Harness) -> int:
    response = h.client.get("/jobs")
    assert response.status_code == 200, response.text
    count: int = response.json()["total"]
    return count


def nested(depth: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    result: dict[str, Any] = value
    return result


# --- bodies past the bound: 413 ---------------------------------------------------------------


def test_a_body_past_the_bound_is_413_with_content_length(api_only: Harness) -> None:
    before = total(api_only)
    body = json.dumps({"params": {"blob": "x" * MiB}}).encode()
    response = api_only.client.post(
        "/jobs", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text
    detail = response.json()["detail"]
    assert "at most 1048576 bytes (TRAINYARD_MAX_BODY_BYTES)" in detail
    assert f"this one is {len(body)} bytes" in detail
    assert total(api_only) == before


def test_a_chunked_body_past_the_bound_is_413(api_only: Harness) -> None:
    """No Content-Length: the bytes are counted as they stream."""
    before = total(api_only)

    def chunks() -> Iterator[bytes]:
        yield b'{"params": {"blob": "'
        for _ in range(40):
            yield b"x" * (32 * KiB)
        yield b'"}}'

    response = api_only.client.post(
        "/jobs", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413, response.text
    assert "at most 1048576 bytes (TRAINYARD_MAX_BODY_BYTES)" in response.json()["detail"]
    assert total(api_only) == before


def test_the_bound_is_a_setting_and_inclusive(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    h = start_harness(make_settings(database_url=sqlite_url, max_body_bytes=4096), with_agent=False)
    overhead = len(json.dumps({"params": {"s": ""}}))
    at_bound = json.dumps({"params": {"s": "x" * (4096 - overhead)}})
    assert len(at_bound) == 4096
    assert post_raw(h, at_bound).status_code == 201
    response = post_raw(h, json.dumps({"params": {"s": "x" * (4097 - overhead)}}))
    assert response.status_code == 413
    assert "at most 4096 bytes" in response.json()["detail"]
    assert total(h) == 1


@pytest.fixture
def served(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], sqlite_url: str
) -> Iterator[tuple[Harness, int]]:
    """The API under a real uvicorn on a free port (the test client reads bodies whole)."""
    h = start_harness(make_settings(database_url=sqlite_url), with_agent=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(h.system.settings, system_=h.system)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield h, port
    server.should_exit = True
    thread.join(timeout=10)


def read_response(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest


def test_over_a_real_socket_the_413_comes_before_the_body(served: tuple[Harness, int]) -> None:
    """A declared 100 MiB body is refused without one byte of it sent; a chunked one at the
    first chunk past the bound, while the client is still sending (the end never comes)."""
    h, port = served
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 104857600\r\n\r\n"
        )
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"this one is 104857600 bytes" in answer

    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * (64 * KiB)
        for _ in range(17):  # 1.06 MiB: just past the bound, and no terminating chunk
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"TRAINYARD_MAX_BODY_BYTES" in answer
    assert total(h) == 0


# --- the list's bounds ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field", "words"),
    [
        ("offset=9223372036854775808", "offset", "less than or equal to 10000000"),
        ("offset=10000001", "offset", "less than or equal to 10000000"),
        ("offset=-1", "offset", "greater than or equal to 0"),
        ("limit=501", "limit", "less than or equal to 500"),
        ("limit=0", "limit", "greater than or equal to 1"),
        ("limit=99999999999999999999999", "limit", "less than or equal to 500"),
    ],
)
def test_list_bounds_are_422_saying_the_bound(
    api_only: Harness, query: str, field: str, words: str
) -> None:
    response = api_only.client.get(f"/jobs?{query}")
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", field]
    assert words in error["msg"]
    assert response.json()["message"] == f"{field}: {error['msg']}"


def test_the_furthest_page_is_served(api_only: Harness) -> None:
    api_only.submit({})
    page = api_only.client.get("/jobs", params={"offset": 10_000_000, "limit": 500})
    assert page.status_code == 200, page.text
    assert page.json()["items"] == [] and page.json()["total"] == 1


def test_a_job_id_with_a_trailing_newline_is_not_an_id(api_only: Harness) -> None:
    job = api_only.submit({})
    response = api_only.client.get(f"/jobs/{job['id']}%0A")
    assert response.status_code == 404  # like any malformed id: not that job, not a 200
    assert response.json()["detail"].startswith("job not found")


# --- what cannot be stored or served is never stored ----------------------------------------


HOSTILE_BODIES = {
    "params-256-deep": json.dumps({"params": nested(256)}),
    "params-surrogate-value": '{"params": {"k": "\\ud800"}}',
    "params-surrogate-key": '{"params": {"\\ud800": 1}}',
    "params-nul": '{"params": {"k": "a\\u0000b"}}',
    "name-nul": '{"name": "a\\u0000b"}',
    "name-surrogate": '{"name": "a\\udfff"}',
    "image-nul": '{"image": "ubuntu\\u0000"}',
    "command-nul": '{"command": ["python", "a\\u0000"]}',
    "env-value-nul": '{"env": {"A": "\\u0000"}}',
    "env-value-surrogate": '{"env": {"A": "\\ud800"}}',
    "env-name-surrogate": '{"env": {"\\ud800": "x"}}',
    "env-nvidia": '{"env": {"NVIDIA_VISIBLE_DEVICES": "all"}}',
    "memory-past-bigint": '{"resources": {"memory": "8388608t"}}',
    "cpus-no-limit": '{"resources": {"cpus": 1e-10}}',
    "train-nul": '{"epochs": 1, "tag": "a\\u0000"}',
    "train-surrogate-key": '{"epochs": 1, "\\ud800": 1}',
}


@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
def test_hostile_bodies_are_422_and_nothing_is_stored(api_only: Harness, name: str) -> None:
    kept = api_only.submit({"name": "kept", "params": {"note": "naïve ✓ 😀"}})
    path = "/train" if name.startswith("train-") else "/jobs"
    response = post_raw(api_only, HOSTILE_BODIES[name], path)
    assert response.status_code == 422, response.text[:300]
    response.content.decode("utf-8")  # strict: valid UTF-8 even when the input was not
    assert response.json()["message"]
    # Nothing stored: every page and the job itself are still served.
    page = api_only.client.get("/jobs")
    assert page.status_code == 200, page.text[:300]
    assert page.json()["total"] == 1
    assert [j["id"] for j in page.json()["items"]] == [kept["id"]]
    assert api_only.job(kept["id"])["params"] == {"note": "naïve ✓ 😀"}


def test_nul_in_a_name_is_422_on_every_database(api_only: Harness) -> None:
    """PostgreSQL refuses NUL in text (it was a 500 there); SQLite would store it."""
    response = api_only.client.post("/jobs", json={"name": "bad\x00name"})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "name"]
    assert "must not contain NUL (\\u0000)" in error["msg"]
    assert total(api_only) == 0


def test_a_long_image_without_a_name_is_stored_on_every_database(api_only: Harness) -> None:
    """The default name (the image's last part) could pass the 128-character column: a 500
    on PostgreSQL. It is cut to fit."""
    image = "team/model:" + "t" * 128
    job = api_only.submit({"image": image})
    assert job["image"] == image
    assert job["name"] == ("model:" + "t" * 128)[:128]
    assert total(api_only) == 1


def test_memory_past_the_maximum_is_422_without_an_agent(api_only: Harness) -> None:
    """API-only: no agent's capacity to compare with, so the spec's own maximum must hold."""
    for memory in ("8388608t", "65t", "9" * 30):
        response = api_only.client.post("/jobs", json={"resources": {"memory": memory}})
        assert response.status_code == 422, response.text
        assert "maximum of 64t" in response.json()["detail"][0]["msg"]
    job = api_only.submit({"resources": {"memory": "64t"}})
    assert job["resources"]["memory_bytes"] == 64 * 1024**4
    assert total(api_only) == 1


# --- a real container: GPUs named by the agent, an init as PID 1 ----------------------------


def test_the_container_gets_no_gpus_by_env_and_an_init(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    h = start_harness(make_settings(database_url=sqlite_url))
    script = (
        'echo "visible=$NVIDIA_VISIBLE_DEVICES caps=$NVIDIA_DRIVER_CAPABILITIES"; '
        'echo "pid1=$(cat /proc/1/comm)"'
    )
    job = h.submit({"command": ["sh", "-c", script]})
    assert h.wait_final(job["id"])["status"] == "succeeded"
    logs = h.logs(job["id"])
    assert "visible=void caps=compute,utility" in logs
    assert "pid1=docker-init" in logs
    h.wait_no_containers()


def test_sigterm_reaches_a_command_without_a_handler(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    """`sleep` has no SIGTERM handler: as PID 1 it would ignore a cancel's SIGTERM and be
    killed after the grace period (137); under the init it ends at once (143)."""
    h = start_harness(make_settings(database_url=sqlite_url, stop_grace_seconds=20))
    job = h.submit({"command": ["sleep", "120"]})
    h.wait_for(job["id"], lambda j: j["status"] == "running")
    time.sleep(0.5)  # the command is running, not just the container
    started = time.monotonic()
    h.client.post(f"/jobs/{job['id']}/cancel")
    done = h.wait_final(job["id"], timeout=60)
    assert done["status"] == "cancelled"
    assert time.monotonic() - started < 10  # not the 20 s grace period
    assert done["attempts"][0]["exit_code"] == 143
    h.wait_no_containers()


def test_images_outside_the_allowlist_are_refused_and_jobs_get_a_default_timeout(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    h = start_harness(
        make_settings(
            database_url=sqlite_url, allowed_images="trainyard/*, registry.example.com/ml/*"
        ),
        with_agent=False,
    )
    for image in ("alpine:latest", "docker.io/trainyard/train", "registry.example.com/other/x"):
        response = h.client.post("/jobs", json={"image": image})
        assert response.status_code == 422, image
        assert f"image {image!r} is not allowed" in response.json()["message"]
        assert "TRAINYARD_ALLOWED_IMAGES" in response.json()["message"]
    accepted = h.client.post("/jobs", json={"image": "registry.example.com/ml/bert:1"})
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["timeout_seconds"] == 3 * 24 * 3600  # nothing runs forever
    assert h.client.post("/jobs", json={}).status_code == 201  # the default image matches
    assert h.client.get("/jobs").json()["total"] == 2
