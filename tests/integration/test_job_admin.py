"""Finding, deleting and re-running jobs; workdirs; sizes as people read them (real engine,
SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from agent.config import Settings
from agent.db.workdirs import WorkdirStore
from agent.joblog import job_log_path
from tests.conftest import Harness

pytestmark = pytest.mark.docker


def quick(name: str, **extra: object) -> dict[str, object]:
    return {"name": name, "command": ["python3", "-c", "print('hi')"], **extra}


def test_jobs_are_listed_by_label_and_by_name_prefix(harness: Harness) -> None:
    a = harness.submit(quick("resnet-a", labels={"team": "vision", "exp": "lr"}))
    b = harness.submit(quick("resnet-b", labels={"team": "vision"}))
    c = harness.submit(quick("bert-a", labels={"team": "nlp", "exp": "lr"}))
    assert a["labels"] == {"team": "vision", "exp": "lr"}

    def ids(**params: object) -> list[str]:
        response = harness.client.get("/jobs", params=params)
        assert response.status_code == 200, response.text
        return [j["id"] for j in response.json()["items"]]

    assert ids(label="team=vision") == [b["id"], a["id"]]  # newest first
    assert ids(label=["team=vision", "exp=lr"]) == [a["id"]]  # every label must match
    assert ids(label="exp=lr") == [c["id"], a["id"]]
    assert ids(label="team=none") == []
    assert ids(name_prefix="resnet-") == [b["id"], a["id"]]
    assert ids(name_prefix="resnet-", label="exp=lr") == [a["id"]]
    assert ids(name_prefix="res%") == []  # LIKE wildcards are plain characters
    assert ids(name_prefix="_") == []

    bad = harness.client.get("/jobs", params={"label": "team"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "label", 0]
    typo = harness.client.get("/jobs", params={"stauts": "running"})
    assert typo.status_code == 422  # not silently ignored (which would list every job)
    assert "unknown query parameter" in typo.json()["detail"][0]["msg"]
    for job in (a, b, c):
        harness.wait_final(job["id"])


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        ({"bad key": "x"}, "label key 'bad key'"),
        ({"-x": "x"}, "starting and ending with a letter or digit"),
        ({"k" * 64: "x"}, "1 to 63"),
        ({"k": "v" * 257}, "at most 256 characters"),
        ({f"k{i}": "v" for i in range(33)}, "at most 32 items"),
        ({"k": "a\x00b"}, "NUL"),
    ],
)
def test_bad_labels_get_422_naming_the_field(
    harness: Harness, labels: dict[str, str], words: str
) -> None:
    response = harness.client.post("/jobs", json={"labels": labels})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"][:2] == ["body", "labels"]
    assert words in error["msg"]


CHILD_TABLES = ("attempts", "events", "gpu_holds", "job_labels", "metric_points", "job_training")


def test_a_finished_job_is_deleted_with_its_log_outputs_and_metrics(
    harness: Harness,
) -> None:
    script = (
        "import json, os, time\n"
        "open('/outputs/model.pt', 'w').write('weights')\n"
        "print(json.dumps({'epoch': 1, 'epochs': 1, 'loss': 0.5}))\n"
    )
    job = harness.submit({"command": ["python3", "-c", script], "labels": {"team": "vision"}})
    running = harness.submit({"command": ["python3", "-c", "import time; time.sleep(60)"]})
    harness.wait_for(running["id"], lambda j: j["status"] == "running")
    refused = harness.client.delete(f"/jobs/{running['id']}")
    assert refused.status_code == 409
    assert "cancel it first" in refused.json()["detail"]

    assert harness.wait_final(job["id"])["status"] == "succeeded"
    settings = harness.system.settings
    log = job_log_path(settings.log_dir, job["id"])
    outputs = settings.outputs_dir / job["id"]
    assert log.exists() and (outputs / "model.pt").exists()
    assert harness.client.get(f"/jobs/{job['id']}/metrics").json()["series"]

    response = harness.client.delete(f"/jobs/{job['id']}")
    assert response.status_code == 204, response.text
    assert harness.client.get(f"/jobs/{job['id']}").status_code == 404
    assert harness.client.get(f"/jobs/{job['id']}/metrics").status_code == 404
    assert harness.client.delete(f"/jobs/{job['id']}").status_code == 404
    assert not log.exists() and not outputs.exists()
    with harness.system.db.reading() as s:  # every child row went with it (ON DELETE CASCADE)
        for table in CHILD_TABLES:
            query = text(f"SELECT count(*) FROM {table} WHERE job_id = :id")
            left = s.execute(query, {"id": job["id"]})
            assert left.scalar() == 0, table
    ids = [j["id"] for j in harness.client.get("/jobs").json()["items"]]
    assert job["id"] not in ids and running["id"] in ids

    harness.client.post(f"/jobs/{running['id']}/cancel")
    harness.wait_final(running["id"])
    assert harness.client.delete(f"/jobs/{running['id']}").status_code == 204
    harness.wait_no_containers()


def test_rerun_makes_a_new_job_with_the_same_spec_secrets_included(harness: Harness) -> None:
    spec = {
        "name": "again",
        "command": ["python3", "-c", "import os; print('token', os.environ['API_TOKEN'])"],
        "env": {"API_TOKEN": "s3cret"},
        "labels": {"team": "vision"},
        "priority": 5,
    }
    first = harness.submit(spec)
    assert first["env"] == {"API_TOKEN": "***"}
    harness.wait_final(first["id"])

    response = harness.client.post(f"/jobs/{first['id']}/rerun")
    assert response.status_code == 201, response.text
    second = response.json()
    assert response.headers["location"] == f"/jobs/{second['id']}"
    assert second["id"] != first["id"]
    for field in ("name", "command", "labels", "priority", "resources", "env"):
        assert second[field] == first[field], field
    assert harness.wait_final(second["id"])["status"] == "succeeded"
    assert "token s3cret" in harness.logs(second["id"])  # the real value, not '***'


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/not-a-job",
        "/jobs/0123",
        "/jobs/" + "A" * 32,
        "/jobs/not-a-job/logs",
        "/jobs/not-a-job/events",
        "/jobs/not-a-job/metrics",
        "/jobs/not-a-job/outputs",
        "/jobs/not-a-job/outputs/model.pt",
        "/train/not-a-job",
    ],
)
def test_a_malformed_job_id_is_a_404_job_not_found(harness: Harness, path: str) -> None:
    response = harness.client.get(path)
    assert response.status_code == 404, response.text
    assert response.json()["detail"].startswith("job not found")


def test_memory_in_kubernetes_units_and_sizes_shown_as_people_read_them(
    harness: Harness,
) -> None:
    job = harness.submit(quick("k8s", resources={"memory": "512Mi", "disk": "2Gi"}))
    assert job["resources"]["memory_bytes"] == 512 * 2**20
    assert job["resources"]["memory_human"] == "512 MiB"
    assert job["resources"]["disk_bytes"] == 2 * 2**30
    (agent,) = harness.client.get("/agents").json()
    assert agent["memory"]["total"].endswith("iB")  # "22.5 GiB", not "23635508k"
    too_big = harness.client.post("/jobs", json={"resources": {"memory": "64Ti"}})
    assert too_big.status_code == 422
    assert "iB" in too_big.json()["detail"][0]["msg"]  # "largest: 22.5 GiB"
    harness.wait_final(job["id"])


# --- workdirs ---------------------------------------------------------------------------------


def pack(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


TRAIN = b"""
import os, pathlib
print("cwd", os.getcwd())
print("data", pathlib.Path("data/config.txt").read_text().strip())
try:
    open("/workspace/new.txt", "w")
    print("wrote /workspace")
except OSError as exc:
    print("read-only", exc.errno)
"""


def test_a_workdir_is_uploaded_once_and_runs_read_only_at_workspace(
    harness: Harness,
) -> None:
    data = pack({"train.py": TRAIN, "data/config.txt": b"lr=0.1\n"})
    digest = hashlib.sha256(data).hexdigest()
    client = harness.client
    assert client.head(f"/workdirs/{digest}").status_code == 404

    put = client.put(
        f"/workdirs/{digest}", content=data, headers={"Content-Type": "application/gzip"}
    )
    assert put.status_code == 201, put.text
    assert client.head(f"/workdirs/{digest}").status_code == 200
    again = client.put(f"/workdirs/{digest}", content=data)
    assert again.status_code == 200  # the same bytes are stored once

    jobs = [
        harness.submit({"workdir": digest, "command": ["python3", "train.py"]}) for _ in range(2)
    ]
    for job in jobs:
        done = harness.wait_final(job["id"])
        assert done["status"] == "succeeded", done["reason"]
        assert done["workdir"] == digest
        log = harness.logs(job["id"])
        assert "cwd /workspace" in log
        assert "data lr=0.1" in log
        assert "read-only 30" in log  # EROFS: the job cannot change its code
    harness.wait_no_containers()


def test_a_job_naming_a_workdir_never_uploaded_gets_422(harness: Harness) -> None:
    response = harness.client.post("/jobs", json={"workdir": "0" * 64})
    assert response.status_code == 422
    assert "was never uploaded" in response.json()["detail"][0]["msg"]


def link_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("shadow")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/shadow"
        tar.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "digest", "status", "words"),
    [
        (pack({"a": b"1"}), "0" * 64, 400, "the body's sha256 is"),
        (b"plain text", None, 400, "not a gzip-compressed tar"),
        (link_archive(), None, 400, "not a regular file"),
        (pack({"../escape": b"1"}), None, 400, "without '..'"),
        (b"", None, 400, "not a gzip-compressed tar"),
        (pack({"a": b"1"}), "xyz", 422, "should match pattern '^[0-9a-f]{64}$'"),
    ],
)
def test_bad_workdir_uploads_are_refused_with_what_to_change(
    harness: Harness, body: bytes, digest: str | None, status: int, words: str
) -> None:
    name = digest or hashlib.sha256(body).hexdigest()
    response = harness.client.put(f"/workdirs/{name}", content=body)
    assert response.status_code == status, response.text
    assert words in str(response.json()["detail"])
    if digest is None:
        assert harness.client.head(f"/workdirs/{name}").status_code == 404


def test_a_workdir_past_the_size_bound_is_a_413(
    start_harness: Callable[..., Harness], make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    h = start_harness(make_settings(database_url=sqlite_url, workdir_max_bytes=4096))
    data = pack({"noise": os.urandom(8192)})
    response = h.client.put(f"/workdirs/{hashlib.sha256(data).hexdigest()}", content=data)
    assert response.status_code == 413
    assert "TRAINYARD_WORKDIR_MAX_BYTES" in response.json()["detail"]


def test_the_agent_refuses_an_archive_in_the_database_that_is_unsafe(
    harness: Harness, tmp_path: Path
) -> None:
    """Checked again before unpacking as root: the database is not trusted blindly."""
    data = link_archive()
    digest = hashlib.sha256(data).hexdigest()
    WorkdirStore(harness.system.db).put(digest, data, owner=None)  # behind the API's back
    job = harness.submit({"workdir": digest, "command": ["true"]})
    done = harness.wait_final(job["id"])
    assert done["status"] == "failed"
    assert done["outcome"] == "config_error"
    assert "not a regular file" in done["reason"]
    harness.wait_no_containers()
