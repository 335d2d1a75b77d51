"""Gateway test fixtures: fake engines as real subprocesses, and the real gateway on loopback.

The gateway runs under uvicorn in a background thread with its own event loop (so the tests can
use both the sync and async official clients), on a socket bound to a free port.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import kmock
import pytest
import uvicorn
from fastapi import FastAPI
from relais_gateway.app import create_app
from relais_gateway.config import AuthConfig, StaticDeployment
from relais_gateway.forward.service import Gateway
from relais_gateway.routing.registry import BackendSource, StaticSource
from relais_gateway.settings import Settings

from tests.fakes.process import FakeEngine

OLLAMA_MODEL = "qwen2.5:0.5b"
TGI_MODEL = "llama-3-8b"
VLLM_MODEL = "Qwen/Qwen2.5-7B-Instruct"  # vLLM knows it by its --served-model-name
MAX_TOKENS = 64


class GatewayServer:
    """A running gateway: `url`, the app, and the service object (balancer, source) inside."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            loop="asyncio",
            http="httptools",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def start(self) -> GatewayServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    @property
    def gateway(self) -> Gateway:
        gateway: Gateway = self.app.state.gateway
        return gateway


TGI_ENGINE_MODEL = "fake-org/fake-model"  # the model id the fake TGI serves and reports


def deployment(
    name: str,
    engine: str,
    model: str,
    urls: list[str],
    engine_model: str | None = None,
    routing: dict[str, Any] | None = None,
    **limits: Any,
) -> StaticDeployment:
    """A static deployment entry; `limits` are requestLimits fields. TGI's engine model is the
    id the fake reports, as a real TGI reports its `--model-id`."""
    if engine_model is None and engine == "tgi":
        engine_model = TGI_ENGINE_MODEL
    entry: dict[str, Any] = {
        "name": name,
        "engine": engine,
        "servedModelName": model,
        "endpoints": urls,
        "requestLimits": {"maxTokens": MAX_TOKENS, **limits},
    }
    if engine_model is not None:
        entry["model"] = engine_model
    if routing is not None:
        entry["routing"] = routing
    return StaticDeployment.model_validate(entry)


@pytest.fixture(scope="session")
def ollama_fake() -> Iterator[FakeEngine]:
    with FakeEngine("ollama") as fake:
        yield fake


@pytest.fixture(scope="session")
def tgi_fake() -> Iterator[FakeEngine]:
    with FakeEngine("tgi") as fake:
        yield fake


@pytest.fixture(scope="session")
def vllm_fake() -> Iterator[FakeEngine]:
    with FakeEngine("vllm", models=[VLLM_MODEL]) as fake:
        yield fake


@pytest.fixture
def vllm_engine(vllm_fake: FakeEngine) -> FakeEngine:
    vllm_fake.reset_sync()
    return vllm_fake


@pytest.fixture
def ollama_engine(ollama_fake: FakeEngine) -> FakeEngine:
    """The shared fake Ollama, reset to its startup switches with an empty request log."""
    ollama_fake.reset_sync()
    return ollama_fake


@pytest.fixture
def tgi_engine(tgi_fake: FakeEngine) -> FakeEngine:
    tgi_fake.reset_sync()
    return tgi_fake


GatewayFactory = Callable[..., GatewayServer]


@pytest.fixture
def start_gateway() -> Iterator[GatewayFactory]:
    """Start gateways: `start_gateway(deployments, auth=None, source=None, **settings)`."""
    servers: list[GatewayServer] = []

    def start(
        deployments: list[StaticDeployment] | None = None,
        auth: dict[str, Any] | None = None,
        source: BackendSource | None = None,
        **settings: Any,
    ) -> GatewayServer:
        auth_config = AuthConfig.model_validate(auth or {"disabled": True})
        gateway_settings = Settings(**settings)
        backend_source = source or StaticSource(
            deployments or [], health_interval_s=gateway_settings.health_check_interval_s
        )
        app = create_app(gateway_settings, source=backend_source, auth=auth_config)
        server = GatewayServer(app).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def gateway(
    start_gateway: GatewayFactory, ollama_engine: FakeEngine, tgi_engine: FakeEngine
) -> GatewayServer:
    """A gateway with auth disabled in front of one fake Ollama model and one fake TGI model."""
    return start_gateway(
        [
            deployment("qwen", "ollama", OLLAMA_MODEL, [ollama_engine.url]),
            deployment("llama", "tgi", TGI_MODEL, [tgi_engine.url]),
        ]
    )


VERBS = {"get", "list", "watch", "create", "patch", "delete"}
"""What the gateway's Kubernetes source needs of the API emulator's resources."""


@pytest.fixture
def k8s(kmock: kmock.KubernetesEmulator) -> kmock.KubernetesEmulator:
    """The API emulator serving LLMDeployments and EndpointSlices, as the gateway reads them."""
    for key, kind in (
        ("relais.dev/v1alpha1/llmdeployments", "LLMDeployment"),
        ("discovery.k8s.io/v1/endpointslices", "EndpointSlice"),
    ):
        kmock.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=True, verbs=VERBS)
    return kmock
