"""Job states, the transition table, and JobSpec validation (agent/jobs.py)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from pydantic import ValidationError

from agent.core.errors import InvalidTransition
from agent.core.jobs import (
    FINAL_STATUSES,
    MAX_SPEC_JSON_BYTES,
    MIN_MEMORY_BYTES,
    TRANSITIONS,
    JobSpec,
    JobStatus,
    Outcome,
    Resources,
    can_transition,
    check_transition,
)

Q, ST, R, OK, F, C = (
    JobStatus.QUEUED,
    JobStatus.STARTING,
    JobStatus.RUNNING,
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
)

# The table written out independently of the code: (from, to) pairs that are allowed.
ALLOWED = {
    (Q, ST),
    (Q, C),
    (ST, R),
    (ST, Q),
    (ST, F),
    (ST, C),
    (R, OK),
    (R, F),
    (R, C),
    (R, Q),
}
ALL_PAIRS = list(itertools.product(JobStatus, JobStatus))


# --- statuses and transitions -----------------------------------------------------------------


def test_status_values_are_exactly_the_six_states() -> None:
    assert [s.value for s in JobStatus] == [
        "queued",
        "starting",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ]
    assert JobStatus("queued") is Q
    assert Q == "queued"  # StrEnum: compares equal to its value (stored as text in SQL)


def test_transition_table_matches_the_written_spec_exactly() -> None:
    listed = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert listed == ALLOWED
    assert set(TRANSITIONS) == set(JobStatus)


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS, ids=lambda s: s.value)
def test_every_pair_allowed_iff_listed(current: JobStatus, target: JobStatus) -> None:
    expected = (current, target) in ALLOWED
    assert can_transition(current, target) is expected
    if expected:
        assert check_transition(current, target) is None
    else:
        with pytest.raises(InvalidTransition) as info:
            check_transition(current, target)
        assert str(info.value) == f"a {current.value} job cannot become {target.value}"
        assert info.value.status_code == 409


def test_no_status_may_transition_to_itself() -> None:
    for status in JobStatus:
        assert not can_transition(status, status)


@pytest.mark.parametrize("final", [OK, F, C], ids=lambda s: s.value)
def test_final_states_have_no_exits(final: JobStatus) -> None:
    assert TRANSITIONS[final] == frozenset()
    for target in JobStatus:
        assert not can_transition(final, target)


@pytest.mark.parametrize(
    ("current", "target", "allowed"),
    [
        (Q, C, True),  # a queued job can be cancelled before it ever runs
        (Q, R, False),  # must go through starting
        (Q, OK, False),
        (Q, F, False),
        (R, Q, True),  # requeued for a retry
        (ST, Q, True),  # claim given back (e.g. image pull failed transiently)
        (OK, Q, False),
        (OK, F, False),
        (C, Q, False),
        (F, Q, False),
        (R, ST, False),
    ],
)
def test_named_transitions(current: JobStatus, target: JobStatus, allowed: bool) -> None:
    assert can_transition(current, target) is allowed


def test_every_non_final_state_can_reach_cancelled_and_every_state_is_reachable() -> None:
    for status in JobStatus:
        if not status.is_final:
            assert can_transition(status, C)
    # Breadth-first from queued reaches every status.
    seen, frontier = {Q}, [Q]
    while frontier:
        nxt = [t for s in frontier for t in TRANSITIONS[s] if t not in seen]
        seen.update(nxt)
        frontier = nxt
    assert seen == set(JobStatus)


@pytest.mark.parametrize(
    ("status", "final", "active"),
    [
        (Q, False, False),
        (ST, False, True),
        (R, False, True),
        (OK, True, False),
        (F, True, False),
        (C, True, False),
    ],
    ids=lambda v: v.value if isinstance(v, JobStatus) else str(v),
)
def test_is_final_and_is_active(status: JobStatus, final: bool, active: bool) -> None:
    assert status.is_final is final
    assert status.is_active is active
    assert (status in FINAL_STATUSES) is final


def test_outcome_values() -> None:
    assert {o.value for o in Outcome} == {
        "succeeded",
        "user_error",
        "oom",
        "cuda_oom",
        "timeout",
        "cancelled",
        "config_error",
        "infra_error",
        "stalled",
        "disk_exceeded",
    }


# --- JobSpec validation -----------------------------------------------------------------------

DIGEST = "sha256:" + "0123456789abcdef" * 4

FULL_SPEC: dict[str, Any] = {
    "name": "resnet sweep",
    "image": "registry:5000/team/model:v1",
    "command": ["python", "train.py", "--epochs", "3"],
    "params": {"epochs": 3, "lr": 0.001, "layers": [64, 128], "opt": {"name": "adam"}},
    "env": {"WANDB_MODE": "offline", "_PRIVATE": "1", "lower_case": ""},
    "resources": {"memory": "4g", "cpus": 1.5, "gpus": 2, "disk": "20g"},
    "timeout_seconds": 3600,
    "max_retries": 2,
    "priority": 10,
    "retry_on": ["user_error", "oom"],
    "non_retryable_exit_codes": [2, 64],
    "labels": {"team": "vision", "example.com/tier": "gold"},
    "workdir": "ab" * 32,
    "stop_grace_seconds": 5,
    "stall_timeout_seconds": 600,
}


def errors_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(data)
    return info.value.errors()


def only_error(data: dict[str, Any]) -> dict[str, Any]:
    errors = errors_of(data)
    assert len(errors) == 1, errors
    return errors[0]


def test_full_spec_round_trips() -> None:
    spec = JobSpec.model_validate(FULL_SPEC)
    assert spec.model_dump() == FULL_SPEC
    again = JobSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
    assert json.loads(spec.model_dump_json()) == FULL_SPEC


def test_empty_spec_has_defaults() -> None:
    spec = JobSpec()
    assert spec.model_dump() == {
        "name": None,
        "image": None,
        "command": None,
        "params": {},
        "env": {},
        "resources": {"memory": None, "cpus": None, "gpus": 0, "disk": None},
        "timeout_seconds": None,
        "max_retries": None,
        "priority": 0,
        "retry_on": None,
        "non_retryable_exit_codes": [],
        "labels": {},
        "workdir": None,
        "stop_grace_seconds": None,
        "stall_timeout_seconds": None,
    }


def test_name_and_image_are_stripped_and_memory_normalised() -> None:
    spec = JobSpec.model_validate(
        {"name": "  run 1  ", "image": "  trainyard/train:latest ", "resources": {"memory": " 4G "}}
    )
    assert spec.name == "run 1"
    assert spec.image == "trainyard/train:latest"
    assert spec.resources.memory == "4g"


@pytest.mark.parametrize(
    ("data", "loc", "type_", "msg_part"),
    [
        ({"gpu": 1}, ("gpu",), "extra_forbidden", "Extra inputs are not permitted"),
        (
            {"resources": {"gpu": 1}},
            ("resources", "gpu"),
            "extra_forbidden",
            "Extra inputs are not permitted",
        ),
        (
            {"resources": {"memory": "lots"}},
            ("resources", "memory"),
            "value_error",
            "unit k, m, g or t",
        ),
        (
            {"resources": {"memory": "1k"}},
            ("resources", "memory"),
            "value_error",
            "at least 6m",
        ),
        (
            {"resources": {"memory": str(MIN_MEMORY_BYTES - 1)}},
            ("resources", "memory"),
            "value_error",
            "at least 6m",
        ),
        (
            {"resources": {"memory": "0"}},
            ("resources", "memory"),
            "value_error",
            "positive",
        ),
        ({"resources": {"cpus": 0}}, ("resources", "cpus"), "greater_than", "greater than 0"),
        ({"resources": {"cpus": -1.5}}, ("resources", "cpus"), "greater_than", "greater than 0"),
        (
            {"resources": {"cpus": 1025}},
            ("resources", "cpus"),
            "less_than_equal",
            "less than or equal to 1024",
        ),
        (
            {"resources": {"gpus": -1}},
            ("resources", "gpus"),
            "greater_than_equal",
            "greater than or equal to 0",
        ),
        (
            {"resources": {"gpus": 65}},
            ("resources", "gpus"),
            "less_than_equal",
            "less than or equal to 64",
        ),
        ({"command": []}, ("command",), "too_short", "at least 1 item"),
        ({"command": "python train.py"}, ("command",), "list_type", "valid list"),
        ({"command": ["python", 3]}, ("command", 1), "string_type", "valid string"),
        ({"command": ["x" * 4097]}, ("command", 0), "string_too_long", "at most 4096"),
        ({"command": ["x"] * 257}, ("command",), "too_long", "at most 256"),
        ({"env": {"1BAD": "x"}}, ("env",), "value_error", "must match [A-Za-z_][A-Za-z0-9_]*"),
        ({"env": {"BAD-NAME": "x"}}, ("env",), "value_error", "must match"),
        ({"env": {"": "x"}}, ("env",), "value_error", "must match"),
        ({"env": {"TRAINYARD_X": "x"}}, ("env",), "value_error", "TRAINYARD_ are reserved"),
        ({"env": {"trainyard_params": "x"}}, ("env",), "value_error", "TRAINYARD_ are reserved"),
        ({"env": {"A": 1}}, ("env", "A"), "string_type", "valid string"),
        ({"env": {"A": None}}, ("env", "A"), "string_type", "valid string"),
        ({"image": "UPPER/Case"}, ("image",), "value_error", "Docker image reference"),
        ({"image": "bad image"}, ("image",), "value_error", "Docker image reference"),
        ({"image": "Ubuntu"}, ("image",), "value_error", "Docker image reference"),
        ({"image": "team/model:"}, ("image",), "value_error", "Docker image reference"),
        ({"image": "team/model@sha256:abc"}, ("image",), "value_error", "Docker image reference"),
        ({"image": ""}, ("image",), "value_error", "Docker image reference"),
        ({"image": "a" * 513}, ("image",), "string_too_long", "at most 512"),
        ({"params": {"lr": float("nan")}}, ("params",), "value_error", "no NaN or Infinity"),
        ({"params": {"lr": float("inf")}}, ("params",), "value_error", "no NaN or Infinity"),
        (
            {"params": {"deep": {"list": [1, float("-inf")]}}},
            ("params",),
            "value_error",
            "no NaN or Infinity",
        ),
        (
            {"params": {"blob": "x" * MAX_SPEC_JSON_BYTES}},
            ("params",),
            "value_error",
            "at most 65536 bytes",
        ),
        ({"params": [1, 2]}, ("params",), "dict_type", "valid dictionary"),
        (
            {"timeout_seconds": 0},
            ("timeout_seconds",),
            "greater_than_equal",
            "greater than or equal to 1",
        ),
        (
            {"timeout_seconds": 30 * 24 * 3600 + 1},
            ("timeout_seconds",),
            "less_than_equal",
            "less than or equal to 2592000",
        ),
        (
            {"max_retries": -1},
            ("max_retries",),
            "greater_than_equal",
            "greater than or equal to 0",
        ),
        ({"max_retries": 101}, ("max_retries",), "less_than_equal", "less than or equal to 100"),
        ({"priority": 1001}, ("priority",), "less_than_equal", "less than or equal to 1000"),
        (
            {"priority": -1001},
            ("priority",),
            "greater_than_equal",
            "greater than or equal to -1000",
        ),
        ({"name": "   "}, ("name",), "string_too_short", "at least 1 character"),
        ({"name": "n" * 129}, ("name",), "string_too_long", "at most 128"),
    ],
)
def test_bad_field_is_rejected_with_its_location(
    data: dict[str, Any], loc: tuple[Any, ...], type_: str, msg_part: str
) -> None:
    error = only_error(data)
    assert error["loc"] == loc
    assert error["type"] == type_
    assert msg_part in error["msg"]


def test_several_bad_fields_are_all_reported() -> None:
    errors = errors_of({"priority": 5000, "resources": {"cpus": 0, "gpus": -1}, "extra": 1})
    assert sorted(e["loc"] for e in errors) == sorted(
        [("priority",), ("resources", "cpus"), ("resources", "gpus"), ("extra",)]
    )


@pytest.mark.parametrize(
    ("memory", "normalised"),
    [
        ("4g", "4g"),
        ("1.5g", "1.5g"),
        ("512m", "512m"),
        ("6m", "6m"),  # exactly Docker's minimum
        (str(MIN_MEMORY_BYTES), str(MIN_MEMORY_BYTES)),
        ("2GiB", "2gib"),
        ("1T", "1t"),
    ],
)
def test_memory_accepted(memory: str, normalised: str) -> None:
    assert Resources(memory=memory).memory == normalised


@pytest.mark.parametrize(("cpus", "gpus"), [(0.01, 0), (1024, 64), (1, 0), (0.5, 1)], ids=str)
def test_resource_boundaries_accepted(cpus: float, gpus: int) -> None:
    resources = Resources(cpus=cpus, gpus=gpus)
    assert (resources.cpus, resources.gpus) == (cpus, gpus)


@pytest.mark.parametrize(
    "image",
    [
        "trainyard/train:latest",
        "trainyard/train",
        "ubuntu",
        "python:3.11-slim",
        "registry:5000/team/model:v1",
        "localhost:5000/model",
        "ghcr.io/org/sub/model:2024.01_rc-1",
        "nvcr.io/nvidia/pytorch:24.01-py3",
        "my-model.v2_x",
        f"trainyard/train@{DIGEST}",
        f"registry:5000/team/model:v1@{DIGEST}",
        "team/model:" + "t" * 128,
    ],
)
def test_image_accepted(image: str) -> None:
    assert JobSpec(image=image).image == image


@pytest.mark.parametrize(
    "image",
    [
        "team/model:" + "t" * 129,  # tag longer than 128
        "team/model:-tag",  # tag must start with a word character
        "team//model",
        "team/model/",
        "/model",
        "team/.model",
        f"team/model@{DIGEST.upper()}",
        "team/model:v1:v2",
    ],
)
def test_image_rejected(image: str) -> None:
    error = only_error({"image": image})
    assert error["loc"] == ("image",)
    assert "Docker image reference" in error["msg"]


@pytest.mark.parametrize(
    "name", ["A", "_", "a1", "CUDA_VISIBLE_DEVICES_X", "TRAINYARDX", "X" * 200]
)
def test_env_names_accepted(name: str) -> None:
    assert JobSpec(env={name: "v"}).env == {name: "v"}


def test_env_value_may_be_long_but_bounded() -> None:
    assert JobSpec(env={"A": "v" * 32768}).env["A"] == "v" * 32768
    error = only_error({"env": {"A": "v" * 32769}})
    assert error["loc"] == ("env", "A")
    assert error["type"] == "string_too_long"


@pytest.mark.parametrize("name", ["FOO\n", "TRAINYARD\n"])
def test_env_name_with_trailing_newline_is_rejected(name: str) -> None:
    error = only_error({"env": {name: "x"}})
    assert error["loc"] == ("env",)


@pytest.mark.parametrize("image", ["trainyard/train:vé", "trainyard/train:v\u0661"])
def test_image_tag_must_be_ascii(image: str) -> None:
    only_error({"image": image})


@pytest.mark.parametrize("image", ["team/my__model:v1", "team/my--model:v1"])
def test_image_docker_separators_accepted(image: str) -> None:
    assert JobSpec(image=image).image == image


def test_params_size_limit_is_exact() -> None:
    # {"blob": "<n x>"} encodes to 12 + n characters.
    overhead = len(json.dumps({"blob": ""}))
    at_limit = {"blob": "x" * (MAX_SPEC_JSON_BYTES - overhead)}
    assert len(json.dumps(at_limit)) == MAX_SPEC_JSON_BYTES
    assert JobSpec(params=at_limit).params == at_limit
    over = {"blob": "x" * (MAX_SPEC_JSON_BYTES - overhead + 1)}
    error = only_error({"params": over})
    assert error["loc"] == ("params",)
    assert "at most 65536 bytes" in error["msg"]


def test_params_non_ascii_counted_in_escaped_form() -> None:
    # json.dumps escapes "é" as \u00e9 (6 bytes), so 11000 of them exceed 64 KiB.
    error = only_error({"params": {"s": "é" * 11000}})
    assert error["loc"] == ("params",)
    assert JobSpec(params={"s": "é" * 10000}).params["s"] == "é" * 10000


def test_retry_on_accepts_only_classes_worth_retrying() -> None:
    assert JobSpec(retry_on=["oom", "timeout"]).retry_on == [Outcome.OOM, Outcome.TIMEOUT]
    assert JobSpec(retry_on=[]).retry_on == []
    for refused in ("cancelled", "infra_error", "succeeded"):
        error = only_error({"retry_on": [refused]})
        assert error["loc"] == ("retry_on",)
        assert f"{refused} cannot be retried on request" in error["msg"]
        assert (
            "allowed: config_error, cuda_oom, disk_exceeded, oom, timeout, user_error"
            in error["msg"]
        )
    assert only_error({"retry_on": ["sometimes"]})["loc"] == ("retry_on", 0)


def test_non_retryable_exit_codes_are_exit_codes() -> None:
    assert JobSpec(non_retryable_exit_codes=[2, 3]).non_retryable_exit_codes == [2, 3]
    assert only_error({"non_retryable_exit_codes": [256]})["loc"] == (
        "non_retryable_exit_codes",
        0,
    )


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"resources": {"gpus": True}}, ("resources", "gpus")),
        ({"resources": {"cpus": True}}, ("resources", "cpus")),
        ({"priority": False}, ("priority",)),
        ({"timeout_seconds": True}, ("timeout_seconds",)),
        ({"max_retries": True}, ("max_retries",)),
        ({"stop_grace_seconds": True}, ("stop_grace_seconds",)),
        ({"stall_timeout_seconds": True}, ("stall_timeout_seconds",)),
        ({"non_retryable_exit_codes": [False]}, ("non_retryable_exit_codes", 0)),
    ],
)
def test_true_and_false_are_not_numbers(data: dict[str, Any], loc: tuple[Any, ...]) -> None:
    # pydantic would read them as 1 and 0: `"gpus": true` is a mistake, not a request for one.
    error = only_error(data)
    assert error["loc"] == loc
    assert "must be a number, not true or false" in error["msg"]
