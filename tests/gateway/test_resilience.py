"""Routing and failure handling: retry, ejection, error mapping, timeouts, drops, disconnects."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.fakes.process import FakeEngine
from tests.gateway.conftest import (
    OLLAMA_MODEL,
    TGI_MODEL,
    GatewayFactory,
    GatewayServer,
    deployment,
)

CHAT: list[Any] = [{"role": "user", "content": "hi"}]
BODY = {"model": OLLAMA_MODEL, "messages": CHAT, "stream": False}
# Least-outstanding routing: these tests need every replica tried (PrefixHash would send the same
# prompt to the same replica every time, which is its point; see test_routing.py).
SPREAD = {"strategy": "LeastLoad"}


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll until `predicate()` holds (generous: the machine may be loaded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def free_dead_url() -> str:
    """A loopback URL with nothing listening (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def spare() -> Iterator[FakeEngine]:
    """A second fake Ollama replica."""
    with FakeEngine("ollama") as fake:
        yield fake


def chat(server: GatewayServer, **kwargs: Any) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json={**BODY, **kwargs}, timeout=60)


@pytest.mark.parametrize("status", [502, 503])
def test_retry_on_other_replica_after_5xx_and_eject(
    start_gateway: GatewayFactory, ollama_engine: FakeEngine, spare: FakeEngine, status: int
) -> None:
    ollama_engine.configure_sync(status=status)
    server = start_gateway(
        [deployment("q", "ollama", OLLAMA_MODEL, [ollama_engine.url, spare.url], routing=SPREAD)],
        eject_cooldown_s=60,
    )
    answers = [chat(server) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 6
    # The failing replica was tried at most once: then ejected for the cool-down.
    assert len(ollama_engine.requests_sync()) <= 1
    assert len(spare.requests_sync()) >= 5
    if ollama_engine.requests_sync():
        assert server.gateway.balancer.is_ejected(ollama_engine.url)
    metrics = httpx.get(server.url + "/metrics").text
    assert "relais_gateway_upstream_failures_total" in metrics


def test_retry_on_connect_error(start_gateway: GatewayFactory, spare: FakeEngine) -> None:
    """Without health checks (or between two), a dead endpoint is found by a request: retried
    on another replica and ejected."""
    dead = free_dead_url()
    server = start_gateway(
        [deployment("q", "ollama", OLLAMA_MODEL, [dead, spare.url], routing=SPREAD)],
        health_check_interval_s=0,
    )
    assert [chat(server).status_code for _ in range(4)] == [200] * 4
    assert server.gateway.balancer.is_ejected(dead)


def test_static_endpoints_are_health_checked(
    start_gateway: GatewayFactory, spare: FakeEngine
) -> None:
    """A static endpoint that does not answer its health route gets no request; a model with no
    healthy endpoint waits (bounded) for one instead of failing at once, as in a cold start."""
    dead = free_dead_url()
    server = start_gateway(
        [
            deployment("q", "ollama", OLLAMA_MODEL, [dead, spare.url], routing=SPREAD),
            deployment("gone", "ollama", "gone", [dead]),
        ],
        health_check_interval_s=0.2,
        cold_start_timeout_s=1,
    )
    assert server.gateway.source.resolve(OLLAMA_MODEL).replicas == (spare.url,)  # type: ignore[union-attr]
    assert [chat(server).status_code for _ in range(4)] == [200] * 4
    assert not server.gateway.balancer.is_ejected(dead)  # never tried: nothing to eject
    began = time.monotonic()
    waited = chat(server, model="gone")
    assert waited.status_code == 503
    assert "became ready within 1 s" in waited.json()["error"]["message"]
    assert time.monotonic() - began >= 1
    assert httpx.get(server.url + "/readyz").status_code == 200  # the gateway itself is ready


def test_ejected_replica_returns_after_cool_down(
    start_gateway: GatewayFactory, ollama_engine: FakeEngine, spare: FakeEngine
) -> None:
    ollama_engine.configure_sync(status=503)
    server = start_gateway(
        [deployment("q", "ollama", OLLAMA_MODEL, [ollama_engine.url, spare.url], routing=SPREAD)],
        eject_cooldown_s=0.5,
    )
    while not ollama_engine.requests_sync():
        assert chat(server).status_code == 200
    ollama_engine.configure_sync(status=None)
    wait_for(lambda: not server.gateway.balancer.is_ejected(ollama_engine.url))
    before = len(ollama_engine.requests_sync())
    for _ in range(6):
        assert chat(server).status_code == 200
    assert len(ollama_engine.requests_sync()) > before


def test_least_outstanding_requests(
    start_gateway: GatewayFactory, ollama_engine: FakeEngine, spare: FakeEngine
) -> None:
    for fake in (ollama_engine, spare):
        fake.configure_sync(token_delay_ms=300)  # slows streams only
    server = start_gateway(
        [deployment("q", "ollama", OLLAMA_MODEL, [ollama_engine.url, spare.url], routing=SPREAD)]
    )
    body = {"model": OLLAMA_MODEL, "messages": CHAT}
    # Hold one slow stream on one replica; every other request must go to the idle one.
    with httpx.stream("POST", server.url + "/api/chat", json=body, timeout=60) as slow:
        busy, idle = (
            (ollama_engine, spare) if ollama_engine.requests_sync() else (spare, ollama_engine)
        )
        assert server.gateway.balancer.inflight_by_replica[busy.url] == 1
        for _ in range(4):
            assert chat(server).status_code == 200
        assert len(idle.requests_sync()) == 4
        assert len(busy.requests_sync()) == 1
        slow.read()


@pytest.mark.parametrize(
    ("engine_status", "client_status"),
    [(500, 502), (503, 503), (429, 429), (422, 422), (400, 400), (404, 404)],
)
@pytest.mark.parametrize("engine", ["ollama", "tgi"])
def test_upstream_error_mapping(
    start_gateway: GatewayFactory,
    ollama_engine: FakeEngine,
    tgi_engine: FakeEngine,
    engine: str,
    engine_status: int,
    client_status: int,
) -> None:
    fake = ollama_engine if engine == "ollama" else tgi_engine
    fake.configure_sync(status=engine_status)
    server = start_gateway([deployment("m", engine, OLLAMA_MODEL, [fake.url])])
    for stream in (False, True):
        response = chat(server, stream=stream)
        assert response.status_code == client_status
        assert response.json()["error"]["message"].startswith(f"engine answered {engine_status}")


@pytest.mark.parametrize("model", [OLLAMA_MODEL, TGI_MODEL])
def test_mid_stream_drop_ends_cleanly(
    gateway: GatewayServer, ollama_engine: FakeEngine, tgi_engine: FakeEngine, model: str
) -> None:
    for fake in (ollama_engine, tgi_engine):
        fake.configure_sync(drop_after_chunks=3)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=30)
    received: list[str] = []

    def consume() -> None:
        for chunk in client.chat.completions.create(model=model, messages=CHAT, stream=True):
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError, match="engine"):
        consume()
    assert "".join(received)  # some text arrived before the drop
    with pytest.raises(ollama.ResponseError):
        list(
            ollama.Client(host=gateway.url, timeout=30).chat(
                model=model, messages=CHAT, stream=True
            )
        )
    wait_for(lambda: gateway.gateway.balancer.total_inflight == 0)


@pytest.mark.parametrize("engine", ["ollama", "tgi"])
def test_slow_first_token_times_out_with_504(
    start_gateway: GatewayFactory, ollama_engine: FakeEngine, tgi_engine: FakeEngine, engine: str
) -> None:
    fake = ollama_engine if engine == "ollama" else tgi_engine
    fake.configure_sync(first_token_delay_ms=5000, delay_ms=5000)
    server = start_gateway(
        [deployment("m", engine, OLLAMA_MODEL, [fake.url])], first_byte_timeout_s=0.5
    )
    for stream in (True, False):
        response = chat(server, stream=stream)
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "upstream_timeout"


def test_hang_times_out(start_gateway: GatewayFactory, ollama_engine: FakeEngine) -> None:
    ollama_engine.configure_sync(hang=True)
    server = start_gateway(
        [deployment("q", "ollama", OLLAMA_MODEL, [ollama_engine.url])], first_byte_timeout_s=0.5
    )
    response = httpx.post(
        server.url + "/api/generate", json={"model": OLLAMA_MODEL, "prompt": "x"}, timeout=30
    )
    assert response.status_code == 504
    assert "timed out" in response.json()["error"]
    wait_for(lambda: bool(ollama_engine.requests_sync()[-1]["disconnected"]))


def test_stream_idle_timeout_ends_the_stream(
    start_gateway: GatewayFactory, tgi_engine: FakeEngine
) -> None:
    tgi_engine.configure_sync(token_delay_ms=5000)
    server = start_gateway(
        [deployment("l", "tgi", TGI_MODEL, [tgi_engine.url])], stream_idle_timeout_s=0.5
    )
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=30)
    with pytest.raises(openai.APIError, match="timed out"):
        list(client.chat.completions.create(model=TGI_MODEL, messages=CHAT, stream=True))


def test_client_disconnect_mid_stream_cancels_upstream(
    start_gateway: GatewayFactory, ollama_engine: FakeEngine
) -> None:
    ollama_engine.configure_sync(token_delay_ms=1000, tokens=60)
    server = start_gateway([deployment("q", "ollama", OLLAMA_MODEL, [ollama_engine.url])])
    body = {"model": OLLAMA_MODEL, "prompt": "x"}
    with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as response:
        next(response.iter_lines())  # the stream began; now walk away
    wait_for(lambda: bool(ollama_engine.requests_sync()[-1]["disconnected"]))
    wait_for(lambda: server.gateway.balancer.total_inflight == 0)


def test_client_disconnect_before_answer_cancels_upstream(
    start_gateway: GatewayFactory, ollama_engine: FakeEngine
) -> None:
    ollama_engine.configure_sync(hang=True)
    server = start_gateway([deployment("q", "ollama", OLLAMA_MODEL, [ollama_engine.url])])
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=BODY, timeout=1.0)
    wait_for(lambda: bool(ollama_engine.requests_sync()[-1]["disconnected"]))
    wait_for(lambda: server.gateway.balancer.total_inflight == 0)


def test_shutdown_drains_in_flight_streams(
    start_gateway: GatewayFactory, ollama_engine: FakeEngine
) -> None:
    ollama_engine.configure_sync(token_delay_ms=200)
    server = start_gateway([deployment("q", "ollama", OLLAMA_MODEL, [ollama_engine.url])])
    body = {"model": OLLAMA_MODEL, "messages": CHAT}
    with httpx.stream("POST", server.url + "/api/chat", json=body, timeout=60) as response:
        lines = response.iter_lines()
        next(lines)
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        rest = [line for line in lines if line]
    stopper.join()
    assert json.loads(rest[-1])["done"] is True
    assert len(rest) == 8  # 7 more tokens and the done line
