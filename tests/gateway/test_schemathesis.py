"""Property-based requests from the gateway's own OpenAPI document: never a server error.

Bounded and deterministic: a fixed number of derandomised examples per operation, positive and
negative (schema-violating) bodies, against a real gateway with real fake engines behind it.
"""

from __future__ import annotations

import itertools
from typing import Any

import hypothesis
import schemathesis
from schemathesis.checks import not_a_server_error

from tests.gateway.conftest import GatewayServer

EXAMPLES_PER_OPERATION = 30


def test_no_server_errors(gateway: GatewayServer) -> None:
    schema = schemathesis.openapi.from_url(gateway.url + "/openapi.json")
    schema.config.base_url = gateway.url
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/api/generate"}
    calls = 0
    for operation, mode in itertools.product(operations, list(schemathesis.GenerationMode)):
        bodiless = not operation.body
        if mode is schemathesis.GenerationMode.NEGATIVE and bodiless:
            continue  # nothing to violate in a bodiless GET or POST (e.g. .../cancel)

        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        def no_5xx(case: Any) -> None:
            nonlocal calls
            calls += 1
            response = case.call(base_url=gateway.url, timeout=60)
            case.validate_response(response, checks=[not_a_server_error])

        no_5xx()
    assert calls >= len(operations) + 4  # every operation, and negative bodies for the 4 POSTs
