"""OpenTelemetry traces (issue #18): a real gateway process exports over OTLP/HTTP to a receiver
run by the test; the span tree of a request retried once, the caller's trace continued, and the
engine given the same trace in `traceparent`."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from relais_gateway.edge.tracing import enabled

from tests.fakes import servers
from tests.fakes.process import FakeEngine
from tests.fakes.recording import BackgroundServer

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP trace receiver: every span it is sent, decoded."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        app = web.Application()
        app.router.add_post("/v1/traces", self.receive)
        self.server = BackgroundServer(app)

    async def receive(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest.FromString(await request.read())
        with self.lock:
            for resource in message.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
        return web.Response(body=b"", content_type="application/x-protobuf")

    def trace(self, trace_id: str, count: int, timeout_s: float = 10) -> list[Span]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                found = [s for s in self.spans if s.trace_id.hex() == trace_id]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{len(found)} spans of trace {trace_id}, wanted {count}")


def attributes(span: Span) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        values[kv.key] = getattr(kv.value, kind) if kind else None
    return values


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    with receiver.server:
        yield receiver


def test_off_by_default() -> None:
    assert not enabled({})
    assert enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert enabled({"OTEL_TRACES_EXPORTER": "otlp"})
    assert not enabled({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})


def test_a_retried_request_is_one_trace_that_reaches_the_engine(receiver: Receiver) -> None:
    with FakeEngine("vllm", models=["m"]) as failing, FakeEngine("vllm", models=["m"]) as good:
        failing.configure_sync(status=503)
        failing_url, good_url = failing.url, good.url
        config = {
            "deployments": [
                {
                    "name": "m",
                    "engine": "vllm",
                    "servedModelName": "m",
                    "endpoints": [failing.url, good.url],
                    "routing": {"strategy": "LeastLoad"},
                }
            ],
            "auth": {"keys": [{"name": "team-a", "key": "sk-a"}]},
        }
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.server.url,
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        with servers.gateway_process(config, env=env) as gateway:
            retried = None
            for n in range(4):  # LeastLoad rotates: within two requests one tries `failing`
                trace_id = f"{TRACE_ID[:-1]}{n}"
                answer = httpx.post(
                    gateway.url + "/v1/chat/completions",
                    json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                    headers={
                        "Authorization": "Bearer sk-a",
                        "traceparent": f"00-{trace_id}-{PARENT_ID}-01",
                    },
                    timeout=30,
                )
                assert answer.status_code == 200
                if any(r["path"] == "/v1/chat/completions" for r in failing.requests_sync()):
                    retried = trace_id
                    break
            assert retried is not None
            spans = receiver.trace(retried, 4)
        engine_saw = [
            r["headers"].get("traceparent", "")
            for fake in (failing, good)
            for r in fake.requests_sync()
            if r["path"] == "/v1/chat/completions"
        ]
    server = next(s for s in spans if s.kind == Span.SPAN_KIND_SERVER)
    assert server.parent_span_id.hex() == PARENT_ID  # the caller's trace, continued
    server_attributes = attributes(server)
    assert server_attributes["relais.model"] == "m"
    assert server_attributes["relais.key"] == "team-a"
    assert server_attributes["relais.engine"] == "vllm"
    assert server_attributes["relais.retries"] == 1
    assert server_attributes["relais.replica"] == good_url
    assert server_attributes["http.response.status_code"] == 200
    assert server_attributes["gen_ai.usage.output_tokens"] > 0
    children = [s for s in spans if s.parent_span_id == server.span_id]
    assert sorted(s.name for s in children) == ["relais.upstream", "relais.upstream", "relais.wait"]
    attempts = sorted(
        (s for s in children if s.name == "relais.upstream"),
        key=lambda s: attributes(s)["relais.attempt"],
    )
    assert attributes(attempts[0])["relais.replica"] == failing_url
    assert attempts[0].status.code == Status.STATUS_CODE_ERROR
    assert attributes(attempts[1])["relais.replica"] == good_url
    assert attempts[1].status.code != Status.STATUS_CODE_ERROR
    # Each attempt's own span id reached its engine, in the same trace.
    sent = {header.split("-")[2] for header in engine_saw if retried in header}
    assert sent == {attempts[0].span_id.hex(), attempts[1].span_id.hex()}
