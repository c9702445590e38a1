"""The request models built from ssl_core's parameter dataclasses: the same fields, bounds and rules."""

from __future__ import annotations

import warnings

import pytest
from pydantic import ValidationError

from api.core.params import params_model
from ssl_core.config import DEFAULT_MAX_MINUTES, TrainConfig
from ssl_core.methods.dino import DINOParams
from ssl_core.methods.multitask import MultitaskParams
from ssl_core.methods.simclr import SimCLRParams


def _errors(model: type, **values: object) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        model(**values)
    return [(".".join(map(str, e["loc"])), e["msg"]) for e in info.value.errors(include_url=False)]


def test_fields_keep_their_defaults_bounds_and_descriptions() -> None:
    schema = params_model(SimCLRParams).model_json_schema()
    assert schema["additionalProperties"] is False
    assert schema["properties"]["temperature"] == {
        "default": 0.2,
        "description": "NT-Xent softmax temperature",
        "exclusiveMinimum": 0.0,
        "maximum": 10.0,
        "title": "Temperature",
        "type": "number",
    }
    assert params_model(SimCLRParams) is params_model(SimCLRParams)


def test_bounds_unknown_keys_and_cross_field_rules_are_validation_errors() -> None:
    assert _errors(params_model(SimCLRParams), temperature=0, nope=1) == [
        ("temperature", "Input should be greater than 0"),
        ("nope", "Extra inputs are not permitted"),
    ]
    [(loc, msg)] = _errors(params_model(DINOParams), local_crop_min_scale=0.5)
    assert loc == ""
    assert "local_crop_min_scale (0.5) must be below global_crop_min_scale (0.4)" in msg
    assert _errors(params_model(TrainConfig), epochs=2, max_minutes=1.0) == [
        ("", "Value error, give either epochs or max_minutes, not both")
    ]


def test_a_value_the_dataclass_fills_in_is_the_models_too() -> None:
    assert params_model(TrainConfig)().max_minutes == DEFAULT_MAX_MINUTES
    assert params_model(TrainConfig)(epochs=3).max_minutes is None


def test_nested_parameters_are_located_and_their_defaults_are_models() -> None:
    model = params_model(MultitaskParams)
    tasks = [{"method": "rotation"}, {"method": "simclr", "params": {"temperature": -1}}]
    assert _errors(model, tasks=tasks) == [("tasks.1.params.temperature", "must be greater than 0.0, got -1")]
    assert _errors(model, tasks=[{"method": "rotation"}, {"method": "simclr", "params": {"nope": 1}}]) == [
        ("tasks.1.params.nope", "unknown field")
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a default of dicts where models belong warns when dumped
        dumped = model().model_dump()
    assert [t["method"] for t in dumped["tasks"]] == ["rotation", "simclr"]
    assert MultitaskParams(**dumped) == MultitaskParams()
