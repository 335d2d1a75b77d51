"""KubernetesSource against KMock: LLMDeployments + EndpointSlices become routable backends."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import kmock
import openai
from relais_gateway.routing.kubernetes import (
    KubeAccess,
    KubernetesSource,
    build_backends,
    kubeconfig_access,
    ready_urls,
)

from tests.fakes.process import FakeEngine
from tests.gateway.conftest import GatewayFactory

LLMD = "/apis/relais.dev/v1alpha1/namespaces/{ns}/llmdeployments"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"


def llmd(name: str, ns: str = "models", *, engine: str = "ollama", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "relais.dev/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
        "spec": {"engine": engine, "model": f"{name}:latest", **spec},
    }


def endpoint_slice(
    name: str, service: str | None, url: str, *, ns: str = "models", ready: bool = True
) -> dict[str, Any]:
    parts = urlsplit(url)
    labels = {"kubernetes.io/service-name": service} if service else {}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "resourceVersion": "1"},
        "addressType": "IPv4",
        "ports": [{"name": "metrics", "port": 9999}, {"name": "http", "port": parts.port}],
        "endpoints": [{"addresses": [parts.hostname], "conditions": {"ready": ready}}],
    }


def test_ready_urls_pure() -> None:
    slices = [
        {
            "ports": [{"name": "http", "port": 11434}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
                {"addresses": ["10.0.0.3"], "conditions": {}},
                {"addresses": ["10.0.0.4"], "conditions": {"ready": True, "terminating": True}},
                {"addresses": ["fd00::5"]},
            ],
        },
        {"ports": [{"name": "grpc", "port": 1}], "endpoints": [{"addresses": ["10.9.9.9"]}]},
    ]
    assert ready_urls(slices) == (
        "http://10.0.0.1:11434",
        "http://10.0.0.3:11434",
        "http://[fd00::5]:11434",
    )


def test_build_backends_names_and_limits() -> None:
    objs = [
        llmd("a", servedModelName="alpha", requestLimits={"maxTokens": 99}),
        {**llmd("b"), "status": {"servedModelName": "beta-effective"}},
        llmd("c", engine="mystery"),
        llmd("dup", servedModelName="alpha"),
    ]
    backends = {b.model: b for b in build_backends(objs, [])}
    assert set(backends) == {"alpha", "beta-effective"}
    assert backends["alpha"].max_tokens == 99
    assert backends["alpha"].name == "a"
    assert backends["beta-effective"].replicas == ()


async def api(k8s: kmock.KubernetesEmulator, method: str, path: str, body: Any = None) -> None:
    """A write to the API emulator, as a client would make it."""
    headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, str(k8s.url).rstrip("/") + path, json=body, headers=headers
        ) as resp,
    ):
        assert resp.status < 300, await resp.text()


async def eventually(check: Callable[[], Any], within_s: float = 20.0) -> None:
    """Poll an async-friendly condition without blocking the emulator's loop."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result is not False:
                return
        except AssertionError:
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


async def test_gateway_routes_from_llmdeployments_and_endpointslices(
    k8s: kmock.KubernetesEmulator,
    start_gateway: GatewayFactory,
    ollama_engine: FakeEngine,
) -> None:
    await api(
        k8s,
        "POST",
        LLMD.format(ns="models"),
        llmd("qwen", servedModelName="qwen-chat", requestLimits={"maxTokens": 32}),
    )
    await api(
        k8s,
        "POST",
        SLICES.format(ns="models"),
        endpoint_slice("qwen-abc", "qwen", ollama_engine.url),
    )
    # Not ours: no service-name label (KMock ignores labelSelector; the source must filter).
    await api(
        k8s, "POST", SLICES.format(ns="models"), endpoint_slice("stray", None, "http://10.1.1.1:1")
    )
    # Another namespace, not watched.
    await api(k8s, "POST", LLMD.format(ns="other"), llmd("hidden", ns="other"))

    source = KubernetesSource(["models"], KubeAccess(str(k8s.url).rstrip("/")), watch_timeout_s=5)
    server = await asyncio.to_thread(start_gateway, source=source)
    async with (
        openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as client,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        assert (await http.get("/readyz")).status_code == 200
        assert [m.id async for m in client.models.list()] == ["qwen-chat"]
        answer = await client.chat.completions.create(
            model="qwen-chat", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content
        assert server.gateway.source.resolve("qwen-chat").replicas == (ollama_engine.url,)  # type: ignore[union-attr]
        too_many = await http.post(
            "/v1/chat/completions",
            json={
                "model": "qwen-chat",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 33,
            },
        )
        assert too_many.status_code == 200  # capped to the deployment's maxTokens (32)
        assert ollama_engine.requests_sync()[-1]["json"]["max_tokens"] == 32

        # The replica stops being ready: 503 + Retry-After.
        await api(
            k8s,
            "PATCH",
            SLICES.format(ns="models") + "/qwen-abc",
            {"endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": False}}]},
        )

        async def unavailable() -> bool:
            body = {"model": "qwen-chat", "messages": [{"role": "user", "content": "x"}]}
            response = await http.post("/v1/chat/completions", json=body)
            return response.status_code == 503 and "retry-after" in response.headers

        await eventually(unavailable)

        # The operator records a new effective name in status: the gateway follows it.
        await api(
            k8s,
            "PATCH",
            LLMD.format(ns="models") + "/qwen",
            {"status": {"servedModelName": "qwen-v2"}},
        )
        await eventually(lambda: server.gateway.source.resolve("qwen-v2") is not None)

        # Deleted: unknown model.
        await api(k8s, "DELETE", LLMD.format(ns="models") + "/qwen")

        async def gone() -> bool:
            body = {"model": "qwen-v2", "messages": [{"role": "user", "content": "x"}]}
            return (await http.post("/v1/chat/completions", json=body)).status_code == 404

        await eventually(gone)


async def test_kubeconfig_access(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://127.0.0.1:6443"}}]
users: [{name: u, user: {token: sekret}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""
    )
    access = await kubeconfig_access(str(kubeconfig))
    assert access.base_url == "http://127.0.0.1:6443"
    assert access.headers() == {"Authorization": "Bearer sekret"}


def test_unreachable_api_server_means_not_ready(start_gateway: GatewayFactory) -> None:
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    source = KubernetesSource([], KubeAccess(dead), sync_wait_s=0.5)
    server = start_gateway(source=source)
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 503
    response = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "any", "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 404  # no backends known yet: a clean 4xx, never a 500
