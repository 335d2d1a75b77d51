"""The shared typed LLMDeployment (relais_api): new fields, defaults, validators, model names.

The operator parses with these models and adds its own checks (relais_operator.spec); the
gateway reads them as they are. The CRD side of each rule is in test_crd.py.
"""

from __future__ import annotations

import datetime
import pathlib
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError
from relais_api import (
    Autoscaling,
    AutoscalingStatus,
    InvalidSpecError,
    LLMDeployment,
    LLMDeploymentSpec,
    Routing,
)
from relais_operator import spec as operator_spec

CRD = pathlib.Path(__file__).resolve().parents[2] / "manifests" / "crd.yaml"
BASE = {"engine": "ollama", "model": "qwen2.5:0.5b"}


def _body(spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "llm", "namespace": "default"}, "spec": spec}


def test_autoscaling_is_absent_by_default_and_defaults_when_given() -> None:
    assert LLMDeploymentSpec.model_validate(BASE).autoscaling is None
    scaling = LLMDeploymentSpec.model_validate({**BASE, "autoscaling": {"maxReplicas": 4}})
    assert scaling.autoscaling == Autoscaling(
        min_replicas=1, max_replicas=4, target_requests=8, scale_down_delay_seconds=300
    )


def test_autoscaling_reads_camel_case_fields() -> None:
    given = {"minReplicas": 0, "maxReplicas": 3, "targetRequests": 2, "scaleDownDelaySeconds": 0}
    parsed = Autoscaling.model_validate(given)
    assert (parsed.min_replicas, parsed.max_replicas) == (0, 3)
    assert (parsed.target_requests, parsed.scale_down_delay_seconds) == (2, 0)
    assert parsed.model_dump(by_alias=True) == given


@pytest.mark.parametrize(
    ("autoscaling", "problem"),
    [
        ({}, "maxReplicas"),
        ({"maxReplicas": 0}, "maxReplicas"),
        ({"maxReplicas": 2, "minReplicas": -1}, "minReplicas"),
        ({"maxReplicas": 2, "targetRequests": 0}, "targetRequests"),
        ({"maxReplicas": 2, "scaleDownDelaySeconds": -5}, "scaleDownDelaySeconds"),
        ({"maxReplicas": 2, "minReplicas": 3}, "minReplicas must be <= maxReplicas"),
    ],
)
def test_autoscaling_rejects_bad_bounds(autoscaling: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidSpecError, match=problem) as caught:
        LLMDeployment.from_body(_body({**BASE, "autoscaling": autoscaling}))
    assert str(caught.value).startswith("spec.autoscaling")


def test_routing_defaults() -> None:
    routing = LLMDeploymentSpec.model_validate(BASE).routing
    assert routing == Routing(strategy="PrefixHash", prefix_char_length=100, load_factor=1.25)
    least = Routing.model_validate(
        {"strategy": "LeastLoad", "loadFactor": 1, "prefixCharLength": 7}
    )
    assert (least.strategy, least.load_factor, least.prefix_char_length) == ("LeastLoad", 1.0, 7)


@pytest.mark.parametrize(
    "routing",
    [{"strategy": "RoundRobin"}, {"prefixCharLength": 0}, {"loadFactor": 0.99}],
)
def test_routing_rejects_bad_values(routing: dict[str, Any]) -> None:
    with pytest.raises(InvalidSpecError, match=r"spec\.routing"):
        LLMDeployment.from_body(_body({**BASE, "routing": routing}))


def test_engine_model_name() -> None:
    ollama = LLMDeploymentSpec.model_validate({**BASE, "servedModelName": "tiny"})
    assert (ollama.engine_model_name, ollama.effective_served_model_name) == (
        "qwen2.5:0.5b",
        "tiny",
    )
    tgi = LLMDeploymentSpec.model_validate(
        {"engine": "tgi", "model": "google/gemma-2-2b-it", "servedModelName": "gemma"}
    )
    assert tgi.engine_model_name == "google/gemma-2-2b-it"


def test_autoscaling_status_fits_the_crd() -> None:
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft7Validator(schema["properties"]["status"])
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    written = AutoscalingStatus(demand=12.5, desired_replicas=2, last_scale_time=when)
    status = {"autoscaling": written.model_dump(mode="json", by_alias=True)}
    assert status["autoscaling"] == {
        "demand": 12.5,
        "desiredReplicas": 2,
        "lastScaleTime": "2026-01-01T00:00:00Z",
    }
    assert list(validator.iter_errors(status)) == []
    assert AutoscalingStatus.model_validate(status["autoscaling"]) == written
    with pytest.raises(ValidationError):
        AutoscalingStatus(demand=-1)


def test_shared_parse_knows_nothing_of_the_operators_flags() -> None:
    body = _body({"engine": "tgi", "model": "a/b", "args": ["--port=1"]})
    assert LLMDeployment.from_body(body).spec.args == ["--port=1"]  # the gateway reads it
    with pytest.raises(InvalidSpecError, match="--port is set by the operator"):
        operator_spec.LLMDeployment.from_body(body)
    parsed = operator_spec.LLMDeployment.from_body(_body(BASE))
    assert isinstance(parsed, operator_spec.LLMDeployment)
    assert isinstance(parsed, LLMDeployment)


def test_bad_name_is_reported_by_the_shared_model() -> None:
    body = {"metadata": {"name": "Bad_Name", "namespace": "d"}, "spec": BASE}
    with pytest.raises(InvalidSpecError, match="lower-case letters"):
        LLMDeployment.from_body(body)
