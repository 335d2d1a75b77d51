"""The LLMDeployment as the operator parses it: the shared model plus the operator's own checks.

The typed resource lives in `relais_api` (shared with the gateway). The operator adds what only
it knows, from its engine table: flags and environment variables it sets itself, which a spec
must not set again. A failure raises `InvalidSpecError`, which the handlers turn into
`Ready=False, reason=InvalidSpec`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from relais_api import (
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    InvalidSpecError,
    LLMDeploymentSpec,
    describe,
)
from relais_api import LLMDeployment as _SharedLLMDeployment

from relais_operator.engines import ENGINES

__all__ = [
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "InvalidSpecError",
    "LLMDeployment",
    "LLMDeploymentSpec",
    "describe",
    "operator_problems",
]


def operator_problems(spec: LLMDeploymentSpec) -> list[str]:
    """What the operator refuses in a schema-valid spec: flags and variables it manages."""
    engine = ENGINES[spec.engine]
    problems = []
    for arg in spec.args:
        flag = arg.split("=", 1)[0]
        if flag in engine.managed_flags:
            problems.append(f"spec.args: {flag} is set by the operator; remove it from args")
    managed_env = {*engine.cache_env, *engine.serve_env, *engine.read_only_cache_env, "HF_TOKEN"}
    managed_env |= engine.managed_env
    for var in spec.env:
        if var.name in managed_env:
            problems.append(f"spec.env: {var.name} is set by the operator; remove it from env")
    return problems


class LLMDeployment(_SharedLLMDeployment):
    """The shared LLMDeployment, parsed with the operator's checks."""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Self:
        """Parse a resource body; raise InvalidSpecError with every problem, readable."""
        llm = super().from_body(body)
        problems = operator_problems(llm.spec)
        if problems:
            raise InvalidSpecError("; ".join(problems))
        return llm
