"""The operator's metrics module: how reconciles are classified, what the status collector
exports, the autoscaler's series and the /metrics endpoint (no cluster, no operator)."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import kopf
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from relais_operator import metrics
from relais_operator.spec import InvalidSpecError

from tests.fakes.servers import free_port


def samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The current samples of one family in the operator's registry, by sorted labels."""
    text = generate_latest(metrics.REGISTRY).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def _permanent_from_invalid_spec() -> kopf.PermanentError:
    try:
        try:
            raise InvalidSpecError("spec.args: --port is managed")
        except InvalidSpecError:
            raise kopf.PermanentError("invalid spec") from None  # as handlers.py does
    except kopf.PermanentError as exc:
        return exc


def test_reconcile_results() -> None:
    assert metrics.result_of(None) == "ok"
    assert metrics.result_of(kopf.TemporaryError("later")) == "retry"
    assert metrics.result_of(_permanent_from_invalid_spec()) == "invalid"
    assert metrics.result_of(kopf.PermanentError("HTTP 422")) == "failed"
    assert metrics.result_of(KeyError("bug")) == "error"


def test_every_result_is_exported_from_the_start() -> None:
    results = {dict(labels)["result"] for labels in samples("relais_operator_reconciles_total")}
    assert results == set(metrics.RESULTS)


def test_reconciling_counts_and_times_even_when_it_raises() -> None:
    before = samples("relais_operator_reconciles_total")[(("result", "retry"),)]
    count = samples("relais_operator_reconcile_duration_seconds_count")[()]
    with pytest.raises(kopf.TemporaryError), metrics.reconciling():
        raise kopf.TemporaryError("the API is away")
    assert samples("relais_operator_reconciles_total")[(("result", "retry"),)] == before + 1
    assert samples("relais_operator_reconcile_duration_seconds_count")[()] == count + 1


def test_statuses_become_phases_and_replicas_by_model() -> None:
    written: dict[tuple[str, str], dict[str, Any]] = {
        ("a", "qwen"): {"phase": "Ready", "replicas": 2, "readyReplicas": 2,
                        "servedModelName": "qwen"},
        ("b", "tiny"): {"phase": "Loading", "replicas": 1, "readyReplicas": 0,
                        "servedModelName": "tiny"},
        ("b", "bad"): {"phase": "Invalid"},
    }  # fmt: skip
    metrics.watch_statuses(written)
    try:
        phases = {dict(k)["phase"]: v for k, v in samples("relais_operator_llmdeployments").items()}
        assert phases == {**dict.fromkeys(metrics.PHASES, 0), "Ready": 1, "Loading": 1,
                          "Invalid": 1}  # fmt: skip
        ready = samples("relais_operator_ready_replicas")
        assert ready == {
            (("model", "qwen"), ("name", "qwen"), ("namespace", "a")): 2,
            (("model", "tiny"), ("name", "tiny"), ("namespace", "b")): 0,
        }
        assert len(samples("relais_operator_replicas")) == 2
    finally:
        metrics.watch_statuses({})


def test_autoscaler_series_go_with_their_resource() -> None:
    key = ("team-a", "qwen")
    metrics.autoscaled(key, current=1, desired=3, demand=17.5)
    metrics.scaled(key, up=True)
    labels = (("name", "qwen"), ("namespace", "team-a"))
    assert samples("relais_operator_autoscaler_desired_replicas")[labels] == 3
    assert samples("relais_operator_autoscaler_scale_ups_total")[labels] == 1
    metrics.forget(key)
    metrics.forget(key)  # twice is fine
    assert labels not in samples("relais_operator_autoscaler_desired_replicas")
    assert labels not in samples("relais_operator_autoscaler_scale_ups_total")


def test_api_errors_by_verb_and_code() -> None:
    metrics.api_error("PATCH", 409)
    metrics.api_error("LIST", "network")
    errors = samples("relais_operator_kube_api_errors_total")
    assert errors[(("code", "409"), ("verb", "patch"))] >= 1
    assert errors[(("code", "network"), ("verb", "list"))] >= 1


async def test_serve_answers_metrics_and_gives_way_when_the_port_is_taken() -> None:
    assert await metrics.serve("127.0.0.1", 0) is None
    port = free_port()
    runner = await metrics.serve("127.0.0.1", port)
    assert runner is not None
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            assert resp.status == 200
            assert "relais_operator_reconciles_total" in await resp.text()
        with socket.socket() as other:
            other.bind(("127.0.0.1", 0))
            other.listen()
            taken = other.getsockname()[1]
            assert await metrics.serve("127.0.0.1", taken) is None  # logged, not fatal
    finally:
        await runner.cleanup()
