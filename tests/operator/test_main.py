"""The console script and the settings it reads."""

from __future__ import annotations

import subprocess
import sys

import pytest
from relais_operator.main import load_settings, parse_args
from relais_operator.settings import OperatorSettings, kopf_settings


def test_help_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from relais_operator.main import main; main()", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "relais-operator" in result.stdout
    assert "--namespace" in result.stdout


def test_settings_from_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAIS_OPERATOR_NAMESPACES", "models, team-a")
    monkeypatch.setenv("RELAIS_OPERATOR_LIVENESS_PORT", "9090")
    settings = load_settings(parse_args([]))
    assert settings.namespaces == ["models", "team-a"]
    assert settings.liveness_endpoint == "http://0.0.0.0:9090/healthz"
    assert load_settings(parse_args(["-n", "x", "-n", "y"])).namespaces == ["x", "y"]
    assert load_settings(parse_args(["-A"])).namespaces == []
    assert load_settings(parse_args(["--liveness-port", "0"])).liveness_endpoint is None


def test_kopf_is_tuned_for_few_writes() -> None:
    tuned = kopf_settings(OperatorSettings())
    assert tuned.peering.standalone
    assert tuned.posting.level >= 30  # events for warnings and errors only
