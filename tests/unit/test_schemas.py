"""The original `/train` request (api/schemas.py TrainRequest)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from agent.core.jobs import MAX_SPEC_JSON_BYTES, JobSpec
from api.schemas import TrainRequest


def errors_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        TrainRequest.model_validate(data)
    return info.value.errors()


@pytest.mark.parametrize(
    ("data", "params"),
    [
        ({"epochs": 3, "batch_size": 16}, {"epochs": 3, "batch_size": 16}),
        ({}, {"epochs": 5, "batch_size": 32}),
        ({"epochs": 1}, {"epochs": 1, "batch_size": 32}),
        (
            {"epochs": 3, "learning_rate": 0.01},
            {"epochs": 3, "batch_size": 32, "learning_rate": 0.01},
        ),
        (
            {"epochs": 2, "model": "resnet", "dropout": 0.5, "seed": 7, "amp": True},
            {
                "epochs": 2,
                "batch_size": 32,
                "model": "resnet",
                "dropout": 0.5,
                "seed": 7,
                "amp": True,
            },
        ),
        (
            {"epochs": 100_000, "batch_size": 1_000_000, "learning_rate": 100},
            {"epochs": 100_000, "batch_size": 1_000_000, "learning_rate": 100.0},
        ),
    ],
)
def test_params(data: dict[str, Any], params: dict[str, Any]) -> None:
    request = TrainRequest.model_validate(data)
    assert request.params() == params
    # Every accepted request becomes a valid job spec.
    assert JobSpec(params=request.params()).params == params


def test_learning_rate_only_when_given() -> None:
    assert "learning_rate" not in TrainRequest().params()
    assert "learning_rate" not in TrainRequest.model_validate({"learning_rate": None}).params()
    assert TrainRequest(learning_rate=0.5).params()["learning_rate"] == 0.5


def test_params_from_json_body() -> None:
    request = TrainRequest.model_validate_json('{"epochs": 3, "batch_size": 16, "tag": "x"}')
    assert request.params() == {"tag": "x", "epochs": 3, "batch_size": 16}


def test_params_returns_a_fresh_dict() -> None:
    request = TrainRequest.model_validate({"tag": "x"})
    request.params()["tag"] = "changed"
    assert request.params()["tag"] == "x"


@pytest.mark.parametrize(
    ("data", "loc", "type_"),
    [
        ({"epochs": 0}, ("epochs",), "greater_than_equal"),
        ({"epochs": -3}, ("epochs",), "greater_than_equal"),
        ({"epochs": 100_001}, ("epochs",), "less_than_equal"),
        ({"epochs": "many"}, ("epochs",), "int_parsing"),
        ({"epochs": 1.5}, ("epochs",), "int_from_float"),
        ({"batch_size": 0}, ("batch_size",), "greater_than_equal"),
        ({"batch_size": 1_000_001}, ("batch_size",), "less_than_equal"),
        ({"learning_rate": 0}, ("learning_rate",), "greater_than"),
        ({"learning_rate": -0.1}, ("learning_rate",), "greater_than"),
        ({"learning_rate": 101}, ("learning_rate",), "less_than_equal"),
    ],
)
def test_known_fields_are_checked(data: dict[str, Any], loc: tuple[str, ...], type_: str) -> None:
    errors = errors_of(data)
    assert [(e["loc"], e["type"]) for e in errors] == [(loc, type_)]


@pytest.mark.parametrize("value", [{"depth": 50}, [1, 2, 3], None], ids=["dict", "list", "null"])
def test_structured_extra_is_rejected(value: Any) -> None:
    errors = errors_of({"epochs": 3, "model": value})
    assert len(errors) == 1
    assert errors[0]["type"] == "value_error"
    assert "model: extra /train parameters must be strings, numbers or booleans" in errors[0]["msg"]
    assert "POST /jobs with 'params'" in errors[0]["msg"]


def test_json_schema_example() -> None:
    schema = TrainRequest.model_json_schema()
    assert schema["examples"] == [{"epochs": 3, "batch_size": 16}]
    # Extra fields are allowed, and the schema says which kinds (what the validator accepts).
    assert schema["additionalProperties"] == {
        "anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]
    }


@pytest.mark.parametrize(
    "extra",
    [float("nan"), float("inf"), "x" * MAX_SPEC_JSON_BYTES],
    ids=["nan", "inf", "huge"],
)
def test_request_that_validates_always_makes_a_valid_job_spec(extra: Any) -> None:
    try:
        request = TrainRequest.model_validate({"epochs": 3, "extra": extra})
    except ValidationError:
        return  # refusing it up front (422) is the correct behaviour
    JobSpec(params=request.params())
