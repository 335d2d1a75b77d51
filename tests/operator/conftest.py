"""Fixtures for the operator tests: a KMock API server with our resources, the real operator.

The operator runs in-process (kopf.operator in a task on the test's loop) against KMock on
loopback, authenticating through a kubeconfig file exactly as it would against a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import kmock
import kopf
import pytest
import yaml
from relais_operator.settings import OperatorSettings, kopf_settings

from tests.operator.kmock_server import FaithfulKMock, declare_resources

NS = "default"
LLMD_PATH = f"/apis/relais.dev/v1alpha1/namespaces/{NS}/llmdeployments"
STS_PATH = f"/apis/apps/v1/namespaces/{NS}/statefulsets"
SVC_PATH = f"/api/v1/namespaces/{NS}/services"
PVC_PATH = f"/api/v1/namespaces/{NS}/persistentvolumeclaims"
POD_PATH = f"/api/v1/namespaces/{NS}/pods"


def write_kubeconfig(path: pathlib.Path, url: str) -> pathlib.Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "kmock", "user": {"token": "test-token"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
        "current-context": "kmock",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def llmd(name: str, spec: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    """A resource as the API server would store it (KMock does not set uid/version/generation)."""
    return {
        "apiVersion": "relais.dev/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": str(uuid.uuid4()),
            "generation": generation,
            "resourceVersion": "1",
        },
        "spec": spec,
    }


class Api:
    """Test-side client of KMock: create/patch/delete like kubectl, count the operator's writes."""

    def __init__(self, server: kmock.KubernetesEmulator) -> None:
        self.server = server

    async def create(self, path: str, body: dict[str, Any]) -> None:
        resp = await self.server.post(path, json=body)
        assert resp.status < 300, await resp.text()

    async def patch(self, path: str, body: Any) -> None:
        resp = await self.server.patch(path, json=body)
        assert resp.status < 300, await resp.text()

    async def delete(self, path: str) -> None:
        resp = await self.server.delete(path)
        assert resp.status < 300, await resp.text()

    async def get(self, path: str) -> dict[str, Any] | None:
        resp = await self.server.get(path)
        if resp.status == 404:
            return None
        data: dict[str, Any] = await resp.json()
        return data

    def writes(self) -> list[tuple[str, str]]:
        """The operator's write requests so far, (METHOD, path); the test's own are left out."""
        methods = {"POST", "PATCH", "PUT", "DELETE"}
        return [
            (str(req.method.value).upper(), str(req.url.path))
            for req in self.server
            if str(req.method.value).upper() in methods
            and not req.headers.get("User-Agent", "").startswith("kmock/")
        ]


async def eventually(
    check: Callable[[], Awaitable[Any]], within: float = 60.0, what: str = "condition"
) -> Any:
    """Poll `check` until it returns a truthy value (generous: the machine may be loaded)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last result: {result!r}")
        await asyncio.sleep(0.1)


class Operator:
    """The real operator (our kopf registry) in its own thread and event loop, like KopfRunner.

    kopf cancels every task of its loop that it did not find at startup, so it must not share
    the test's loop. It can be stopped and started again (a restart) within one test.
    """

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import relais_operator.handlers  # noqa: F401  (registers the handlers)

        self._stop = threading.Event()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        assert await asyncio.to_thread(ready.wait, 60), "the operator did not start"

    def _run(self, ready: threading.Event) -> None:
        async def run() -> None:
            self._loop, self._main = asyncio.get_running_loop(), asyncio.current_task()
            await kopf.operator(
                registry=kopf.get_default_registry(),
                settings=kopf_settings(self.settings),
                standalone=True,
                clusterwide=True,
                memo=kopf.Memo(settings=self.settings),
                stop_flag=self._stop,
                ready_flag=ready,
            )

        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(run())

    async def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        await asyncio.to_thread(thread.join, 30)
        if thread.is_alive() and self._loop is not None and self._main is not None:
            # Stopped during its first API scan, kopf may keep retrying: cancel it (a "kill").
            self._loop.call_soon_threadsafe(self._main.cancel)
            await asyncio.to_thread(thread.join, 30)
        self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    """Every test talks to a KMock that stamps resourceVersion/uid/generation like a server."""
    return {**kmock_options, "cls": FaithfulKMock}


@pytest.fixture
def server(kmock: kmock.KubernetesEmulator) -> kmock.KubernetesEmulator:
    declare_resources(kmock)
    return kmock


@pytest.fixture
def api(server: kmock.KubernetesEmulator) -> Api:
    return Api(server)


@pytest.fixture
def kubeconfig(
    server: kmock.KubernetesEmulator, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> pathlib.Path:
    path = write_kubeconfig(tmp_path / "kubeconfig", str(server.url).rstrip("/"))
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


@pytest.fixture
async def operator(kubeconfig: pathlib.Path) -> AsyncIterator[Operator]:
    del kubeconfig
    logging.getLogger("kopf").setLevel(logging.INFO)
    runner = Operator(OperatorSettings(liveness_port=0))
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()
