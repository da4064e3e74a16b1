"""The service image (Dockerfile) and the compose files that deploy it.

The image is built offline by scripts/ensure-service-image.sh (`make test` runs it first; the
fixture below runs it again, which is instant when the image is current). Its containers run the
way docker-compose.yml runs them, except for networking: this host's engine has no bridge
(`--bridge=none`), so the API and the agent use host networking on 127.0.0.1 instead of a
compose network, and reach the host's PostgreSQL directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from tests.conftest import FINAL, reset_postgres
from tests.e2e.conftest import free_port, wait_for

SECRET = "a-secret-shared-by-api-and-agents"

pytestmark = [pytest.mark.docker, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
SERVICE_IMAGE = os.environ.get("TRAINYARD_SERVICE_IMAGE", "trainyard/service:latest")
API_UID = 10001  # the image's unprivileged user


@pytest.fixture(scope="module")
def service_image() -> str:
    """The service image, (re)built from the current sources when they changed."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "ensure-service-image.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/ensure-service-image.sh failed:\n{result.stderr}")
    return SERVICE_IMAGE


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """Data and logs, bind-mounted at the same path in the containers. Not under tmp_path:
    pytest's base directory is 0700, and the API's uid must be able to read the job logs."""
    path = Path(tempfile.mkdtemp(prefix="trainyard-service-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _container_logs(container: Any) -> str:
    try:
        text: str = container.logs(tail=60).decode(errors="replace")
    except docker.errors.NotFound:
        return "(container gone)"
    return text


def test_service_image_runs_api_and_agent_on_the_host_engine(
    service_image: str,
    docker_client: docker.DockerClient,
    pg_database: str,
    host_dir: Path,
) -> None:
    reset_postgres(pg_database)
    agent_id = f"test-svc-{uuid.uuid4().hex[:8]}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data_dir, log_dir = host_dir / "data", host_dir / "logs"
    # What the compose file's `migrate` step does as root before the API starts: the API's
    # read-only view of these directories must find them.
    data_dir.mkdir()
    log_dir.mkdir()
    common = {
        "TRAINYARD_DATABASE_URL": pg_database,
        "TRAINYARD_DATA_DIR": str(data_dir),
        "TRAINYARD_LOG_DIR": str(log_dir),
        "TRAINYARD_DEFAULT_MEMORY": "256m",
        "TRAINYARD_DEFAULT_CPUS": "0.5",
        "TRAINYARD_STOP_GRACE_SECONDS": "2",
        "TRAINYARD_AGENT_SECRET": SECRET,
    }
    started: list[Any] = []
    try:
        api = docker_client.containers.run(
            service_image,
            ["api"],
            name=f"{agent_id}-api",
            detach=True,
            network_mode="host",  # no bridge on this engine; compose publishes 127.0.0.1:8000
            environment={**common, "TRAINYARD_HOST": "127.0.0.1", "TRAINYARD_PORT": str(port)},
            # No volume: logs and outputs come from the agent's endpoint, as across hosts.
            # The image's own HEALTHCHECK command, probed every second instead of every 15 s.
            healthcheck={"interval": 1_000_000_000, "start_period": 30_000_000_000},
        )
        started.append(api)
        agent = docker_client.containers.run(
            service_image,
            ["agent"],
            name=f"{agent_id}-agent",
            detach=True,
            network_mode="host",
            user="0:0",  # as in docker-compose.yml: it holds the socket and chowns outputs
            environment={
                **common,
                "TRAINYARD_AGENT_ID": agent_id,
                "TRAINYARD_GPUS": "none",
                "TRAINYARD_MAX_CONCURRENT_JOBS": "1",
                "TRAINYARD_AGENT_LISTEN": f"127.0.0.1:{free_port()}",
            },
            volumes={
                "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
                str(host_dir): {"bind": str(host_dir), "mode": "rw"},  # same path in and out
            },
            healthcheck={"test": ["NONE"]},
        )
        started.append(agent)

        def diagnostics() -> str:
            return "".join(
                f"\n--- {c.name} ---\n{_container_logs(c)}" for c in started if c is not None
            )

        health = wait_for(
            lambda: (r := httpx.get(f"{base}/health", timeout=5)).status_code == 200 and r,
            f"/health of the API container{diagnostics()}",
        )
        assert health.json()["checks"]["database"]["dialect"] == "postgresql"
        wait_for(
            lambda: any(
                a["id"] == agent_id and a["alive"]
                for a in httpx.get(f"{base}/agents", timeout=5).json()
            ),
            f"the containerised agent to register{diagnostics()}",
        )

        # The API runs as the image's unprivileged user; its HEALTHCHECK turns healthy.
        uid = api.exec_run(["id", "-u"]).output.decode().strip()
        assert uid == str(API_UID)

        def health_status() -> str:
            api.reload()
            status: str = api.attrs["State"]["Health"]["Status"]
            return status

        wait_for(lambda: health_status() == "healthy", "the HEALTHCHECK to report healthy", 30)

        accepted = httpx.post(f"{base}/jobs", json={"params": {"epochs": 2}}, timeout=10)
        assert accepted.status_code == 201, accepted.text
        job_id = accepted.json()["id"]
        job = wait_for(
            lambda: (
                (j := httpx.get(f"{base}/jobs/{job_id}", timeout=5).json())["status"] in FINAL and j
            ),
            f"job {job_id} to finish{diagnostics()}",
            timeout=120,
        )
        assert job["status"] == "succeeded", f"{job}{diagnostics()}"
        assert job["exit_code"] == 0

        # Its log, written by the agent's container, read by the API's container.
        log = httpx.get(f"{base}/jobs/{job_id}/logs", params={"tail": 200}, timeout=10)
        assert log.status_code == 200, log.text
        assert '"epoch": 1' in log.text
        assert '"epoch": 2' in log.text

        # Its outputs: written by the job's container into the directory the agent created by
        # host path, listed and served by the API.
        outputs_dir = data_dir / "outputs" / job_id
        assert (outputs_dir / "checkpoint.npz").is_file()
        assert (outputs_dir / "result.json").is_file()
        listing = httpx.get(f"{base}/jobs/{job_id}/outputs", timeout=10)
        assert listing.status_code == 200, listing.text
        names = {f["path"] for f in listing.json()["files"]}
        assert {"checkpoint.npz", "result.json"} <= names
        result = httpx.get(f"{base}/jobs/{job_id}/outputs/result.json", timeout=10)
        assert result.status_code == 200, result.text
        assert result.json() == json.loads((outputs_dir / "result.json").read_text())

        # The agent removes the job's container itself.
        wait_for(
            lambda: (
                not docker_client.api.containers(
                    all=True, filters={"label": f"trainyard.agent={agent_id}"}
                )
            ),
            "the job's container to be removed",
            15,
        )

        # SIGTERM (docker stop, docker-compose down) stops both cleanly.
        agent.stop(timeout=30)
        assert agent.wait(timeout=10)["StatusCode"] == 0, diagnostics()
        api.stop(timeout=30)
        assert api.wait(timeout=10)["StatusCode"] == 0, diagnostics()
    finally:
        for container in started:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        for leftover in docker_client.api.containers(
            all=True, filters={"label": f"trainyard.agent={agent_id}"}
        ):
            docker_client.api.remove_container(leftover["Id"], force=True)


# --- the compose files -------------------------------------------------------------------------


def _compose_config(file: str, **env: str) -> dict[str, Any]:
    """`docker-compose -f FILE config`, as data (through the tool's own Python and PyYAML, as
    the project's venv has no YAML parser)."""
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (make test installs it)")
    out = subprocess.run(
        [compose, "-f", file, "config"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return _yaml(out, compose)


def _yaml(text: str, compose: str) -> dict[str, Any]:
    interpreter = Path(compose).read_text(errors="replace").splitlines()[0].removeprefix("#!")
    converted = subprocess.run(
        [
            *interpreter.split(),
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    data: dict[str, Any] = json.loads(converted)
    return data


def _volumes(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [tuple(v.split(":")) for v in service.get("volumes", [])]  # type: ignore[misc]


def _check_agent(agent: dict[str, Any], home: str) -> None:
    assert agent["command"] == ["agent"]
    assert agent["user"] == "root"
    assert agent["restart"] == "unless-stopped"
    volumes = _volumes(agent)
    assert ("/var/run/docker.sock", "/var/run/docker.sock", "rw") in volumes
    assert (home, home, "rw") in volumes  # outputs are mounted by host path: same path inside
    env = agent["environment"]
    assert env["TRAINYARD_DATA_DIR"].startswith(home + "/")
    assert env["TRAINYARD_LOG_DIR"].startswith(home + "/")
    devices = agent["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    assert agent["healthcheck"]["test"] == ["NONE"]


def test_compose_file_for_one_gpu_host() -> None:
    home = "/srv/trainyard"
    config = _compose_config(
        "docker-compose.yml",
        TRAINYARD_DB_PASSWORD="pw",
        TRAINYARD_AGENT_SECRET=SECRET,
        TRAINYARD_HOME=home,
    )
    services = config["services"]
    assert set(services) == {"postgres", "migrate", "api", "agent", "prometheus"}
    assert "pgdata" in config["volumes"]
    assert ("pgdata", "/var/lib/postgresql/data", "rw") in _volumes(services["postgres"])

    _check_agent(services["agent"], home)

    api = services["api"]
    assert "user" not in api  # the image's unprivileged user
    assert not any("docker.sock" in v for v, *_ in _volumes(api))
    assert _volumes(api) == []  # no shared storage: logs and outputs come from the agent
    assert api["environment"]["TRAINYARD_AGENT_SECRET"] == SECRET
    assert services["agent"]["environment"]["TRAINYARD_AGENT_URL"] == "http://agent:8001"
    assert api["environment"]["TRAINYARD_HOST"] == "0.0.0.0"
    assert api["environment"]["TRAINYARD_ALLOW_PUBLIC_BIND"] == "true"
    assert api["ports"] and all(p.startswith("127.0.0.1:") for p in api["ports"])
    for name in ("api", "agent"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )

    prometheus = services["prometheus"]
    mounted = {source for source, *_ in _volumes(prometheus)}
    assert str(ROOT / "deploy" / "prometheus.yml") in mounted
    scrape = _yaml(
        (ROOT / "deploy" / "prometheus.yml").read_text(), shutil.which("docker-compose") or ""
    )
    targets = {
        t.split(":")[0]
        for job in scrape["scrape_configs"]
        for group in job["static_configs"]
        for t in group["targets"]
    }
    assert {"api", "agent"} <= targets


def test_compose_file_requires_a_database_password() -> None:
    with pytest.raises(subprocess.CalledProcessError) as failed:
        _compose_config(
            "docker-compose.yml", TRAINYARD_DB_PASSWORD="", TRAINYARD_AGENT_SECRET=SECRET
        )
    assert "TRAINYARD_DB_PASSWORD" in failed.value.stderr


def test_compose_file_for_agents_on_other_hosts() -> None:
    config = _compose_config(
        "docker-compose.hosts.yml",
        TRAINYARD_DB_PASSWORD="pw",
        TRAINYARD_DB_HOST="10.0.0.1",
        TRAINYARD_AGENT_ID="gpu-host-2",
        TRAINYARD_AGENT_SECRET=SECRET,
        TRAINYARD_AGENT_ADDRESS="10.0.0.2",
        TRAINYARD_HOME="/srv/trainyard",
    )
    assert set(config["services"]) == {"agent"}
    agent = config["services"]["agent"]
    _check_agent(agent, "/srv/trainyard")
    assert agent["environment"]["TRAINYARD_AGENT_ID"] == "gpu-host-2"
    assert "@10.0.0.1:5432/" in agent["environment"]["TRAINYARD_DATABASE_URL"]
    assert agent["environment"]["TRAINYARD_AGENT_URL"] == "http://10.0.0.2:8001"
    assert [p.split("/")[0] for p in agent["ports"]] == ["10.0.0.2:8001:8001"]  # cluster only
