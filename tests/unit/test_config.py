"""Settings from keyword arguments and `TRAINYARD_*` environment variables (agent/config.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.config import DEFAULT_TRAIN_IMAGE, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TRAINYARD_* variable from the outer environment leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("TRAINYARD_"):
            monkeypatch.delenv(name)


def errors_of(**kwargs: Any) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        Settings(**kwargs)
    return info.value.errors()


def test_defaults() -> None:
    s = Settings()
    assert s.host == "127.0.0.1"
    assert s.port == 8000
    assert s.mode == "all"
    assert s.data_dir == Path("data")
    assert s.log_dir == Path("logs")
    assert s.database_url == ""
    assert s.max_queued == 10_000
    assert s.default_image == DEFAULT_TRAIN_IMAGE == "trainyard/train:latest"
    assert s.default_memory == "2g"
    assert s.default_memory_bytes == 2 * 1024**3
    assert s.memory_reserve_bytes == 1024**3
    assert s.default_cpus == 1.0
    assert s.default_timeout_seconds == 3 * 24 * 3600  # nothing runs forever by accident
    assert s.default_max_retries == 3
    assert s.gpus == "auto"
    assert s.lease_seconds == 60.0
    assert s.log_max_bytes == 10 * 1024 * 1024
    assert s.log_backup_count == 5
    assert s.retry_backoff_seconds == 5.0
    assert s.retry_backoff_max_seconds == 600.0
    assert s.max_concurrent_jobs == (os.cpu_count() or 1)
    assert 1 <= len(s.agent_id) <= 64
    assert s.job_log_dir == Path("logs")
    assert s.outputs_dir == Path("data") / "outputs"


def test_keyword_arguments() -> None:
    s = Settings(port=9001, max_queued=5, gpus="0,1", default_image="me/img:1", mode="api")
    assert (s.port, s.max_queued, s.gpus, s.default_image, s.mode) == (
        9001,
        5,
        "0,1",
        "me/img:1",
        "api",
    )


@pytest.mark.parametrize(
    ("var", "value", "attr", "expected"),
    [
        ("TRAINYARD_PORT", "9001", "port", 9001),
        ("TRAINYARD_MAX_QUEUED", "7", "max_queued", 7),
        ("TRAINYARD_LOG_MAX_BYTES", "2048", "log_max_bytes", 2048),
        ("TRAINYARD_LOG_BACKUP_COUNT", "0", "log_backup_count", 0),
        ("TRAINYARD_DEFAULT_IMAGE", "me/img:2", "default_image", "me/img:2"),
        ("TRAINYARD_GPUS", " 0, 1 ", "gpus", "0,1"),
        ("TRAINYARD_MODE", "agent", "mode", "agent"),
        ("TRAINYARD_DATA_DIR", "/tmp/ty", "data_dir", Path("/tmp/ty")),
        ("trainyard_port", "9002", "port", 9002),  # env names are case-insensitive
    ],
)
def test_env_prefix(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, attr: str, expected: Any
) -> None:
    monkeypatch.setenv(var, value)
    assert getattr(Settings(), attr) == expected


def test_unprefixed_env_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9003")
    assert Settings().port == 8000


def test_keyword_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINYARD_PORT", "9001")
    assert Settings(port=9004).port == 9004


def test_bad_env_value_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINYARD_PORT", "http")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert [e["loc"] for e in info.value.errors()] == [("port",)]


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.port = 1  # type: ignore[misc]
    assert s.port == 8000


@pytest.mark.parametrize(
    ("kwargs", "loc"),
    [
        ({"port": 0}, ("port",)),
        ({"port": 65536}, ("port",)),
        ({"max_queued": 0}, ("max_queued",)),
        ({"mode": "both"}, ("mode",)),
        ({"log_max_bytes": 1023}, ("log_max_bytes",)),
        ({"log_backup_count": -1}, ("log_backup_count",)),
        ({"lease_seconds": 2.9}, ("lease_seconds",)),
        ({"default_max_retries": 101}, ("default_max_retries",)),
        ({"default_memory": "lots"}, ("default_memory",)),
        ({"memory_reserve": "0"}, ("memory_reserve",)),
        ({"agent_id": ""}, ("agent_id",)),
        ({"agent_id": "a" * 65}, ("agent_id",)),
    ],
)
def test_invalid_values(kwargs: dict[str, Any], loc: tuple[str, ...]) -> None:
    assert [e["loc"] for e in errors_of(**kwargs)] == [loc]


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("0,1", "0,1"),
        ("0", "0"),
        (" 3 , 1 ,2", "3,1,2"),
        ("auto", "auto"),
        ("none", "none"),
        ("", "none"),
        ("  ", "none"),
    ],
)
def test_gpus_accepted(value: str, stored: str) -> None:
    assert Settings(gpus=value).gpus == stored


@pytest.mark.parametrize("value", ["a,b", "0,a", "0,0", "1,2,1", "0,,1", "0,", "-1", "AUTO", "0;1"])
def test_gpus_rejected(value: str) -> None:
    errors = errors_of(gpus=value)
    assert [e["loc"] for e in errors] == [("gpus",)]
    assert "'auto', 'none' or distinct device ids like '0,1'" in errors[0]["msg"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_hosts_allowed(host: str) -> None:
    assert Settings(host=host).host == host


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_public_host_refused(host: str) -> None:
    errors = errors_of(host=host)
    assert len(errors) == 1
    assert "TRAINYARD_HOST must be a loopback address" in errors[0]["msg"]
    assert "TRAINYARD_ALLOW_PUBLIC_BIND=1" in errors[0]["msg"]


def test_public_host_refused_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINYARD_HOST", "0.0.0.0")
    with pytest.raises(ValidationError, match="loopback"):
        Settings()


def test_public_host_allowed_with_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINYARD_ALLOW_PUBLIC_BIND", "1")
    assert Settings(host="0.0.0.0").host == "0.0.0.0"


def test_empty_override_does_not_allow_public_bind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINYARD_ALLOW_PUBLIC_BIND", "")
    with pytest.raises(ValidationError, match="loopback"):
        Settings(host="0.0.0.0")


@pytest.mark.parametrize("value", ["0", "false"])
def test_falsy_override_does_not_allow_public_bind(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("TRAINYARD_ALLOW_PUBLIC_BIND", value)
    with pytest.raises(ValidationError, match="loopback"):
        Settings(host="0.0.0.0")


def test_database_url_defaults_to_sqlite_under_data_dir(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "d")
    assert s.resolved_database_url == f"sqlite:///{(tmp_path / 'd').resolve()}/trainyard.db"
    assert s.resolved_database_url == s.resolved_database_url  # cached on a frozen model


def test_database_url_relative_data_dir_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = Settings(data_dir=Path("rel")).resolved_database_url
    assert url == f"sqlite:///{tmp_path.resolve()}/rel/trainyard.db"
    assert url.startswith("sqlite:////")


def test_database_url_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    pg = "postgresql+psycopg://trainyard@localhost/trainyard"
    assert Settings(database_url=pg).resolved_database_url == pg
    monkeypatch.setenv("TRAINYARD_DATABASE_URL", "sqlite:///elsewhere.db")
    assert Settings().resolved_database_url == "sqlite:///elsewhere.db"


def test_settings_do_not_create_directories(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "data", log_dir=tmp_path / "logs")
    _ = s.resolved_database_url
    assert list(tmp_path.iterdir()) == []
