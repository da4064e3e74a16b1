"""Hostile job specs get a 422 that names the field and the limit, before anything is stored.

Each spec goes through the real API (`create_app`) in front of a service that must never be
reached: validation alone refuses it. No database, no engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from agent.config import Settings
from agent.core.auth import LOCAL_USER
from agent.core.jobs import (
    MAX_MEMORY_BYTES,
    MAX_PARAMS_DEPTH,
    MAX_PARAMS_KEYS,
    MAX_SPEC_JSON_BYTES,
    JobSpec,
    JobStatus,
    check_params,
)
from agent.core.records import Claim, Job
from agent.core.units import LARGEST_MEMORY_BYTES, parse_memory
from agent.runtime.base import ContainerSpec
from agent.runtime.docker_runner import DockerRunner
from agent.worker.container_spec import container_spec
from api.app import create_app, spec_errors
from tests.unit.jobs_for_tests import new_job

KiB = 1024


def nested(depth: int, leaf: Any = 1) -> dict[str, Any]:
    """`depth` levels of objects: nested(1) == {"a": 1}."""
    value: Any = leaf
    for _ in range(depth):
        value = {"a": value}
    result: dict[str, Any] = value
    return result


def nested_lists(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@dataclass(frozen=True)
class Hostile:
    id: str
    body: dict[str, Any] | str  # a str is sent as is (NaN, Infinity: not JSON Python writes)
    field: str  # the 422's `field` (loc without "body"), as people write it
    words: tuple[str, ...]  # what the message must say: the limit or the rule
    path: str = "/jobs"


SURROGATE, LOW_SURROGATE, NUL = "\ud800", "\udfff", "\x00"
SURROGATE_RULE = "no lone surrogates (\\ud800-\\udfff)"
NUL_RULE = "must not contain NUL (\\u0000)"
NVIDIA_RULE = "names starting with NVIDIA_ are reserved"

HOSTILE = [
    # --- params: nesting, text that cannot be stored or served, size, keys, NaN ---
    Hostile("params-256-deep", {"params": nested(256)}, "params", ("at most 32 levels",)),
    Hostile("params-33-deep", {"params": nested(MAX_PARAMS_DEPTH + 1)}, "params", ("at most 32",)),
    Hostile("params-deep-lists", {"params": {"x": nested_lists(40)}}, "params", ("32 levels",)),
    Hostile("params-surrogate-value", {"params": {"k": SURROGATE}}, "params", (SURROGATE_RULE,)),
    Hostile("params-surrogate-key", {"params": {SURROGATE: 1}}, "params", (SURROGATE_RULE,)),
    Hostile(
        "params-low-surrogate-in-list",
        {"params": {"runs": [{"tag": "ok"}, {"tag": "x" + LOW_SURROGATE}]}},
        "params",
        (SURROGATE_RULE, "params.runs[1].tag"),
    ),
    Hostile("params-nul-value", {"params": {"k": "a" + NUL}}, "params", (NUL_RULE, "params.k")),
    Hostile("params-nul-key", {"params": {"a" + NUL: 1}}, "params", (NUL_RULE,)),
    Hostile(
        "params-too-many-keys",
        {"params": {f"k{i}": i for i in range(MAX_PARAMS_KEYS + 1)}},
        "params",
        ("at most 1024 keys",),
    ),
    Hostile(
        "params-too-many-nested-keys",
        {"params": {f"g{i}": {f"k{j}": j for j in range(40)} for i in range(30)}},
        "params",
        ("at most 1024 keys", "every level"),
    ),
    Hostile(
        "params-too-big",
        {"params": {"blob": "x" * MAX_SPEC_JSON_BYTES}},
        "params",
        ("at most 65536 bytes",),
    ),
    Hostile(
        "memory-surrogate",
        {"resources": {"memory": "4g" + SURROGATE}},
        "resources.memory",
        (SURROGATE_RULE,),
    ),
    Hostile("params-nan", '{"params": {"lr": NaN}}', "params", ("no NaN or Infinity",)),
    Hostile("params-infinity", '{"params": {"lr": -Infinity}}', "params", ("no NaN",)),
    # --- name ---
    Hostile("name-nul", {"name": "run" + NUL}, "name", (NUL_RULE,)),
    Hostile("name-surrogate", {"name": "run" + SURROGATE}, "name", (SURROGATE_RULE,)),
    Hostile("name-too-long", {"name": "n" * 129}, "name", ("at most 128 characters",)),
    # --- image ---
    Hostile("image-nul", {"image": "ubuntu" + NUL}, "image", (NUL_RULE,)),
    Hostile("image-surrogate", {"image": "ubuntu" + SURROGATE}, "image", (SURROGATE_RULE,)),
    Hostile("image-too-long", {"image": "a" * 513}, "image", ("at most 512 characters",)),
    Hostile(
        "image-name-past-docker-limit",
        {"image": "team/" + "a" * 251 + ":v1"},
        "image",
        ("at most 255 characters", "Docker's limit"),
    ),
    Hostile("image-not-a-reference", {"image": "Not An Image"}, "image", ("Docker image",)),
    # --- command ---
    Hostile("command-too-many", {"command": ["x"] * 257}, "command", ("at most 256 items",)),
    Hostile("command-item-too-long", {"command": ["x" * 4097]}, "command.0", ("at most 4096",)),
    Hostile("command-nul", {"command": ["python", "a" + NUL]}, "command.1", (NUL_RULE,)),
    Hostile("command-surrogate", {"command": [SURROGATE]}, "command.0", (SURROGATE_RULE,)),
    # --- env ---
    Hostile(
        "env-too-many",
        {"env": {f"V{i}": "x" for i in range(129)}},
        "env",
        ("at most 128 items",),
    ),
    Hostile("env-name-too-long", {"env": {"A" * 257: "x"}}, "env", ("at most 256",)),
    Hostile("env-name-pattern", {"env": {"1BAD": "x"}}, "env", ("[A-Za-z_][A-Za-z0-9_]*",)),
    Hostile(
        "env-value-too-long",
        {"env": {"A": "v" * (32 * KiB + 1)}},
        "env.A",
        ("at most 32768 characters",),
    ),
    Hostile(
        "env-value-too-many-bytes",
        {"env": {"A": "é" * (16 * KiB + 1)}},
        "env",
        ("at most 32768 bytes",),
    ),
    Hostile(
        "env-too-big-in-all",
        {"env": {f"V{i}": "v" * (30 * KiB) for i in range(5)}},
        "env",
        ("at most 131072 bytes",),
    ),
    Hostile(
        "env-nvidia-visible-devices",
        {"env": {"NVIDIA_VISIBLE_DEVICES": "all"}},
        "env",
        ("'NVIDIA_VISIBLE_DEVICES'", NVIDIA_RULE),
    ),
    Hostile(
        "env-nvidia-driver-capabilities",
        {"env": {"NVIDIA_DRIVER_CAPABILITIES": "all"}},
        "env",
        ("'NVIDIA_DRIVER_CAPABILITIES'", NVIDIA_RULE),
    ),
    Hostile(
        "env-nvidia-lower-case",
        {"env": {"nvidia_visible_devices": "all"}},
        "env",
        ("'nvidia_visible_devices'", NVIDIA_RULE),
    ),
    Hostile(
        "env-trainyard-params",
        {"env": {"TRAINYARD_PARAMS": "{}"}},
        "env",
        ("'TRAINYARD_PARAMS'", "TRAINYARD_ are reserved"),
    ),
    Hostile("env-nul-value", {"env": {"A": "x" + NUL}}, "env.A", (NUL_RULE,)),
    Hostile("env-surrogate-value", {"env": {"A": SURROGATE}}, "env.A", (SURROGATE_RULE,)),
    Hostile(
        "env-surrogate-name",
        {"env": {SURROGATE: "x"}},
        "env.\ufffd\ufffd\ufffd.[key]",  # pydantic reports the key so: valid UTF-8
        (SURROGATE_RULE,),
    ),
    # --- resources ---
    Hostile(
        "cpus-rounding-to-no-limit",
        {"resources": {"cpus": 1e-10}},
        "resources.cpus",
        ("at least 0.01",),
    ),
    Hostile("cpus-0.001", {"resources": {"cpus": 0.001}}, "resources.cpus", ("at least 0.01",)),
    Hostile(
        "cpus-just-under", {"resources": {"cpus": 0.0099}}, "resources.cpus", ("at least 0.01",)
    ),
    Hostile("cpus-absurd", {"resources": {"cpus": 1025}}, "resources.cpus", ("1024",)),
    Hostile("cpus-nan", '{"resources": {"cpus": NaN}}', "resources.cpus", ("finite number",)),
    Hostile(
        "memory-overflowing-bigint",
        {"resources": {"memory": "8388608t"}},
        "resources.memory",
        ("maximum of 64t",),
    ),
    Hostile(
        "memory-past-64t",
        {"resources": {"memory": "65t"}},
        "resources.memory",
        ("maximum of 64t",),
    ),
    Hostile(
        "memory-under-docker-minimum",
        {"resources": {"memory": "5m"}},
        "resources.memory",
        ("at least 6m",),
    ),
    Hostile(
        "memory-thousand-digits",
        {"resources": {"memory": "9" * 1000}},
        "resources.memory",
        ("at most 32 characters",),
    ),
    Hostile("gpus-absurd", {"resources": {"gpus": 65}}, "resources.gpus", ("64",)),
    Hostile("gpus-negative", {"resources": {"gpus": -1}}, "resources.gpus", ("0",)),
    # --- numbers ---
    Hostile("timeout-zero", {"timeout_seconds": 0}, "timeout_seconds", ("1",)),
    Hostile(
        "timeout-past-30-days",
        {"timeout_seconds": 30 * 24 * 3600 + 1},
        "timeout_seconds",
        ("2592000",),
    ),
    Hostile("retries-past-100", {"max_retries": 101}, "max_retries", ("100",)),
    Hostile("priority-past-int32", {"priority": 2**70}, "priority", ("1000",)),
    Hostile("priority-too-low", {"priority": -1001}, "priority", ("-1000",)),
    Hostile("retry-on-too-many", {"retry_on": ["oom"] * 9}, "retry_on", ("at most 8",)),
    Hostile(
        "exit-codes-too-many",
        {"non_retryable_exit_codes": [1] * 257},
        "non_retryable_exit_codes",
        ("at most 256",),
    ),
    # --- the original /train request: its extra fields are params ---
    Hostile("train-nul", {"epochs": 2, "tag": "a" + NUL}, "body", (NUL_RULE,), "/train"),
    Hostile(
        "train-surrogate", {"epochs": 2, "tag": SURROGATE}, "body", (SURROGATE_RULE,), "/train"
    ),
    Hostile(
        "train-too-many-keys",
        {f"k{i}": i for i in range(MAX_PARAMS_KEYS)},
        "body",
        ("at most 1024 keys",),
        "/train",
    ),
    Hostile(
        "train-learning-rate-nan",
        '{"learning_rate": NaN}',
        "learning_rate",
        ("finite number",),
        "/train",
    ),
]


class UnreachableService:
    """The service behind the API: a hostile spec must never get this far."""

    tokens_known_to_exist = False

    def submit(self, spec: JobSpec, **_kwargs: Any) -> Any:
        raise AssertionError(f"a hostile spec reached the service: {spec!r:.200}")

    def authenticate(self, _token: str | None) -> Any:
        return LOCAL_USER  # single-user mode: no token exists


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("hostile")
    settings = Settings(data_dir=root / "data", log_dir=root / "logs", gpus="none")
    system: Any = SimpleNamespace(service=UnreachableService(), settings=settings)
    return TestClient(create_app(settings, system_=system))


def test_there_are_at_least_forty_hostile_specs() -> None:
    assert len(HOSTILE) >= 40
    assert len({h.id for h in HOSTILE}) == len(HOSTILE)


@pytest.mark.parametrize("hostile", HOSTILE, ids=lambda h: h.id)
def test_hostile_spec_is_422_naming_field_and_limit(client: TestClient, hostile: Hostile) -> None:
    # ensure_ascii: a lone surrogate or NUL travels as a JSON escape, as a client would send it.
    raw = hostile.body if isinstance(hostile.body, str) else json.dumps(hostile.body)
    response = client.post(
        hostile.path, content=raw.encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text[:500]
    response.content.decode("utf-8")  # strict: the 422 itself is valid UTF-8
    body = response.json()
    # FastAPI's published shape: detail is a list of {loc, msg, type}; plus field and message.
    assert isinstance(body["detail"], list) and body["detail"]
    for item in body["detail"]:
        assert {"loc", "msg", "type", "field"} <= set(item)
        assert all(isinstance(part, str | int) for part in item["loc"])
        assert isinstance(item["msg"], str) and isinstance(item["type"], str)
        assert "input" not in item  # the hostile input is never echoed back
    assert hostile.field in [item["field"] for item in body["detail"]], body
    [item] = [i for i in body["detail"] if i["field"] == hostile.field]
    assert item["loc"][0] == "body"
    for words in hostile.words:
        assert words in item["msg"], item["msg"]
    assert f"{hostile.field}: " in body["message"]
    assert len(response.content) < 16 * KiB  # the refusal stays short, whatever was sent


def test_the_422_shape_is_the_one_openapi_publishes(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    published = schema["paths"]["/jobs"]["post"]["responses"]["422"]
    ref = published["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/HTTPValidationError"
    item_schema = schema["components"]["schemas"]["ValidationError"]
    body = client.post("/jobs", json={"resources": {"cpus": 0.001}, "priority": 5000}).json()
    assert len(body["detail"]) == 2
    for item in body["detail"]:
        assert set(item_schema["required"]) <= set(item)
        for key, value in item.items():
            expected = item_schema["properties"].get(key, {}).get("type")
            if expected == "array":
                assert isinstance(value, list)
            elif expected == "string":
                assert isinstance(value, str)


@pytest.mark.parametrize(
    ("spec", "ok"),
    [
        ({"params": nested(MAX_PARAMS_DEPTH)}, True),  # params itself is level 1 of 32
        ({"params": nested(MAX_PARAMS_DEPTH + 1)}, False),
        ({"params": {"x": nested_lists(MAX_PARAMS_DEPTH - 1)}}, True),
        ({"params": {"x": nested_lists(MAX_PARAMS_DEPTH)}}, False),
        ({"params": {f"k{i}": i for i in range(MAX_PARAMS_KEYS)}}, True),
        ({"params": {"k": "naïve ✓ 😀"}}, True),  # any valid Unicode is fine
        ({"resources": {"cpus": 0.01, "memory": "64t", "gpus": 64}}, True),
        ({"resources": {"memory": "6m"}}, True),
        ({"env": {f"V{i}": "v" * (32 * KiB) for i in range(3)}}, True),  # 96 KiB in all
        ({"env": {"CUDA_VISIBLE_DEVICES": "0"}}, True),  # narrows what the job was given
        ({"env": {"A" * 256: "x"}}, True),
    ],
    ids=lambda v: str(v)[:40],
)
def test_limits_are_exact(spec: dict[str, Any], ok: bool) -> None:
    if ok:
        JobSpec.model_validate(spec)
    else:
        with pytest.raises(ValidationError):
            JobSpec.model_validate(spec)


def test_a_long_image_without_a_name_gets_a_name_that_fits() -> None:
    """The default name is the image's last part, stored in a 128-character column."""
    image = "team/model:" + "t" * 128
    spec = JobSpec(image=image)
    assert spec.image == image
    assert spec.name == ("model:" + "t" * 128)[:128]
    assert JobSpec(image="team/model:v1").name is None  # short ones are named later, as before


def test_check_params_is_iterative_and_names_the_place() -> None:
    deep = nested(5000)  # far past the recursion limit: no RecursionError, a ValueError
    with pytest.raises(ValueError, match="at most 32 levels"):
        check_params(deep)
    with pytest.raises(ValueError, match=r"params\.a\[2\]\.b"):
        check_params({"a": [0, 1, {"b": "\x00"}]})
    with pytest.raises(ValueError, match="keys must be strings"):
        check_params({"a": {1: "x"}})
    with pytest.raises(ValueError, match=r"plain JSON: params\.a is a set"):
        check_params({"a": {1, 2}})


# --- memory sizes never overflow ------------------------------------------------------------


@pytest.mark.parametrize("text", ["8388608t", "8388608.00001t", "9" * 1000, "9" * 400 + "t"])
def test_parse_memory_refuses_what_no_int64_holds(text: str) -> None:
    with pytest.raises(ValueError, match="is more than the maximum of"):
        parse_memory(text)
    with pytest.raises(ValueError, match="maximum of 64t"):
        parse_memory(text, maximum=MAX_MEMORY_BYTES)


def test_parse_memory_maximum_is_inclusive() -> None:
    assert parse_memory("64t", maximum=MAX_MEMORY_BYTES) == MAX_MEMORY_BYTES
    assert parse_memory(str(LARGEST_MEMORY_BYTES)) == LARGEST_MEMORY_BYTES
    with pytest.raises(ValueError, match="maximum"):
        parse_memory(LARGEST_MEMORY_BYTES + 1)
    with pytest.raises(ValueError, match="maximum of 64t"):
        parse_memory(MAX_MEMORY_BYTES + 1, maximum=MAX_MEMORY_BYTES)
    assert parse_memory("1.5g") == 3 * 1024**3 // 2  # exact, as before


def test_a_long_bad_size_is_not_echoed_whole() -> None:
    with pytest.raises(ValueError) as info:
        parse_memory("x" * 10_000)
    assert len(str(info.value)) < 200


# --- capacity refusals in the 422 shape -----------------------------------------------------


def test_capacity_refusal_items_are_located_at_their_fields() -> None:
    message = (
        "resources.memory 60t is more than any agent offers (largest: 8g); "
        "resources.cpus 64 is more than any agent's (largest: 2); "
        "resources.gpus 1 is more than any agent has (largest: 0)"
    )
    assert [(e["loc"], e["field"], e["type"]) for e in spec_errors(message)] == [
        (["body", "resources", "memory"], "resources.memory", "value_error"),
        (["body", "resources", "cpus"], "resources.cpus", "value_error"),
        (["body", "resources", "gpus"], "resources.gpus", "value_error"),
    ]
    assert (
        spec_errors(message)[1]["msg"] == "resources.cpus 64 is more than any agent's (largest: 2)"
    )
    whole = "no single agent offers all of it (a: 4g, 2 cpus, 0 gpus; b: 8g, 1 cpus, 1 gpus)"
    assert spec_errors(whole) == [
        {"loc": ["body"], "msg": whole, "type": "value_error", "field": "body"}
    ]


# --- the container: GPUs from the claim only, init as PID 1 ---------------------------------


def claim_of(env: dict[str, str], gpu_ids: tuple[str, ...]) -> Claim:
    now = datetime.now(UTC)
    base = vars(new_job(env=env, gpus=len(gpu_ids)))
    job = Job(
        **base,
        id="a" * 32,
        status=JobStatus.STARTING,
        reason=None,
        outcome=None,
        exit_code=None,
        attempt_count=1,
        retries_used=0,
        infra_retries_used=0,
        not_before=None,
        created_at=now,
        updated_at=now,
        started_at=None,
        finished_at=None,
        agent_id="test-agent",
        cancel_requested_at=None,
        cancel_requested_by=None,
        attempts=[],
    )
    return Claim(job=job, attempt=1, lease_token="t" * 32, gpu_ids=gpu_ids, agent_id="test-agent")


@pytest.mark.parametrize(
    ("gpu_ids", "visible"), [((), "void"), (("0",), "0"), (("1", "3"), "1,3")], ids=str
)
def test_the_agent_names_the_gpus_from_the_claim(
    tmp_path: Path, gpu_ids: tuple[str, ...], visible: str
) -> None:
    # A job stored before NVIDIA_* was refused at submit still cannot widen its devices.
    stored_env = {
        "NVIDIA_VISIBLE_DEVICES": "all",
        "nvidia_driver_capabilities": "all",
        "NVIDIA_REQUIRE_CUDA": "cuda>=99",
        "TRAINYARD_JOB_ID": "spoofed",
        "MY_SETTING": "on",
    }
    settings = Settings(data_dir=tmp_path, log_dir=tmp_path, gpus="none")
    spec = container_spec(claim_of(stored_env, gpu_ids), settings)
    assert spec.env["NVIDIA_VISIBLE_DEVICES"] == visible
    assert spec.env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert spec.env["TRAINYARD_JOB_ID"] == "a" * 32
    assert spec.env["MY_SETTING"] == "on"
    nvidia = {k for k in spec.env if k.upper().startswith("NVIDIA_")}
    assert nvidia == {"NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"}
    assert spec.gpu_ids == gpu_ids


class RecordingApi:
    """docker-py's low-level client, as far as `DockerRunner.create` uses it."""

    base_url = "http+docker://localhost"

    def __init__(self) -> None:
        self.kwargs: dict[str, Any] = {}

    def create_host_config(self, **kwargs: Any) -> dict[str, Any]:
        return kwargs

    def create_container(self, image: str, **kwargs: Any) -> dict[str, str]:
        self.kwargs = {"image": image, **kwargs}
        return {"Id": "c" * 64}


def test_containers_run_an_init_as_pid_1() -> None:
    runner = DockerRunner("unix:///nonexistent.sock")
    api = RecordingApi()
    runner._client = SimpleNamespace(api=api)
    spec = ContainerSpec(
        name="n",
        image="trainyard/train:latest",
        command=["sleep", "60"],
        env={},
        labels={},
        memory_bytes=64 * 2**20,
        nano_cpus=10**9,
        pids_limit=64,
        user="1000:1000",
    )
    assert runner.create(spec) == "c" * 64
    assert api.kwargs["host_config"]["init"] is True


# --- settings -------------------------------------------------------------------------------


def test_a_public_host_is_one_clear_line() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(host="0.0.0.0")
    [error] = info.value.errors()
    message = error["msg"]
    assert "\n" not in message
    assert message.startswith("TRAINYARD_HOST must be a loopback address")
    assert "'0.0.0.0'" in message
    assert "TRAINYARD_ALLOW_PUBLIC_BIND=1" in message
    assert error["type"] == "unsafe_bind"


def test_body_bound_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().max_body_bytes == 1024 * 1024
    monkeypatch.setenv("TRAINYARD_MAX_BODY_BYTES", "4096")
    assert Settings().max_body_bytes == 4096
    monkeypatch.setenv("TRAINYARD_MAX_BODY_BYTES", "10")
    with pytest.raises(ValidationError, match="greater than or equal to 1024"):
        Settings()
