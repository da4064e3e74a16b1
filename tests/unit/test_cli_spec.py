"""The CLI's job spec: YAML/JSON files, flags laid over them, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli import spec
from cli.errors import CliError

DIGEST = "a" * 64


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_yaml_file_gives_every_field_as_json(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
name: resnet
command: [python3, train.py, --fast]
params: {epochs: 5, lr: 0.1, tags: [a, b]}
resources: {memory: 2Gi, gpus: 1}
labels: {team: vision}
retry_on: [user_error]
""",
    )
    assert spec.load_job_file(path) == {
        "name": "resnet",
        "command": ["python3", "train.py", "--fast"],
        "params": {"epochs": 5, "lr": 0.1, "tags": ["a", "b"]},
        "resources": {"memory": "2Gi", "gpus": 1},
        "labels": {"team": "vision"},
        "retry_on": ["user_error"],
    }
    json_path = write(tmp_path, '{"name": "x", "params": {"epochs": 1}}', "job.json")
    assert spec.load_job_file(json_path) == {"name": "x", "params": {"epochs": 1}}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- a\n- b\n", "must be a mapping of spec fields"),
        ("name: [unclosed\n", "is not valid YAML or JSON"),
        ("a: &x [1, 2]\nb: *x\n", "YAML aliases (*name) are not supported"),
        ("params: {day: 2024-01-01}\n", "quote such values"),
        ("params: {x: .nan}\n", "quote such values"),
    ],
)
def test_a_bad_file_is_one_clear_error(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(CliError) as refused:
        spec.load_job_file(write(tmp_path, text))
    assert problem in refused.value.message
    assert "job.yaml" in refused.value.message


def test_a_missing_huge_or_binary_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="cannot read job file"):
        spec.load_job_file(tmp_path / "absent.yaml")
    huge = tmp_path / "huge.yaml"
    huge.write_text("x: " + "a" * spec.MAX_JOB_FILE_BYTES)
    with pytest.raises(CliError, match="larger than 1024 KiB"):
        spec.load_job_file(huge)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CliError, match="not UTF-8"):
        spec.load_job_file(binary)


def test_flags_override_and_merge_into_the_file() -> None:
    base = {
        "name": "from-file",
        "params": {"epochs": 1, "lr": 0.1},
        "resources": {"memory": "1g", "cpus": 2},
        "env": {"A": "1"},
    }
    built = spec.build_spec(
        base,
        name="from-flag",
        command=["python3", "train.py"],
        gpus=2,
        memory="2Gi",
        params=["epochs=5", "tag=vision", "layers=[64, 32]", "flag=true", "bad=NaN", "empty="],
        env=["B=x=y"],
        labels=["team=vision"],
        timeout_seconds=60,
        max_retries=0,
        priority=-3,
    )
    assert built == {
        "name": "from-flag",
        "command": ["python3", "train.py"],
        "params": {
            "epochs": 5,
            "lr": 0.1,
            "tag": "vision",
            "layers": [64, 32],
            "flag": True,
            "bad": "NaN",
            "empty": "",
        },
        "resources": {"memory": "2Gi", "cpus": 2, "gpus": 2},
        "env": {"A": "1", "B": "x=y"},
        "labels": {"team": "vision"},
        "timeout_seconds": 60,
        "max_retries": 0,
        "priority": -3,
    }
    assert base["params"] == {"epochs": 1, "lr": 0.1}  # the file's dict is not changed
    assert spec.build_spec({}) == {}


@pytest.mark.parametrize("item", ["novalue", "=5", ""])
def test_a_flag_without_key_and_value_names_the_flag(item: str) -> None:
    with pytest.raises(CliError, match=r"--param .* must look like KEY=VALUE"):
        spec.build_spec({}, params=[item])


def test_a_workdir_in_the_file_is_a_directory_next_to_it_or_a_digest(tmp_path: Path) -> None:
    job_file = tmp_path / "jobs" / "job.yaml"
    local = {"workdir": "../src"}
    assert spec.local_workdir(local, job_file) == tmp_path / "jobs" / "../src"
    assert "workdir" not in local  # the spec only ever carries digests
    uploaded = {"workdir": DIGEST}
    assert spec.local_workdir(uploaded, job_file) is None
    assert uploaded == {"workdir": DIGEST}
    with pytest.raises(CliError, match="directory or a sha256"):
        spec.local_workdir({"workdir": 5}, job_file)
